import {
  type Command,
  type CommandResult,
  type Runner,
  requireSuccess,
} from "../../src/host/runner.js";

/**
 * A Runner for unit tests: records every command and answers from a script of canned results, so
 * tests can assert the exact command lines shoal would run.
 */
export class RecordingRunner implements Runner {
  readonly commands: Command[] = [];

  constructor(private readonly answer: (command: Command) => Partial<CommandResult> = () => ({})) {}

  async run(command: Command): Promise<CommandResult> {
    this.commands.push(command);
    return requireSuccess(command, { code: 0, stdout: "", stderr: "", ...this.answer(command) });
  }

  get argvs(): string[][] {
    return this.commands.map((command) => [...command.argv]);
  }
}
