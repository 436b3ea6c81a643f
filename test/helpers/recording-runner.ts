import { type Duplex, PassThrough } from "node:stream";
import {
  type Command,
  type CommandResult,
  type LaunchCommand,
  type Launched,
  type Launcher,
  requireSuccess,
} from "../../src/host/runner.js";

/**
 * A Runner for unit tests: records every command and answers from a script of canned results, so
 * tests can assert the exact command lines shoal would run.
 */
export class RecordingRunner implements Launcher {
  readonly commands: Command[] = [];
  readonly launches: LaunchCommand[] = [];

  constructor(
    private readonly answer: (command: Command) => Partial<CommandResult> = () => ({}),
    /** What a launched program is: by default this test's own process, which never ends. */
    private readonly launched: (command: LaunchCommand) => Launched = () => ({
      pid: process.pid,
      ended: new Promise(() => {}),
    }),
  ) {}

  async run(command: Command): Promise<CommandResult> {
    this.commands.push(command);
    return requireSuccess(command, { code: 0, stdout: "", stderr: "", ...this.answer(command) });
  }

  async launch(command: LaunchCommand): Promise<Launched> {
    this.launches.push(command);
    return this.launched(command);
  }

  readonly connects: string[][] = [];

  /** A stream that has nothing to say: the command line is what a test looks at. */
  connect(argv: readonly [string, ...string[]]): Duplex {
    this.connects.push([...argv]);
    return new PassThrough();
  }

  get argvs(): string[][] {
    return this.commands.map((command) => [...command.argv]);
  }
}
