/**
 * Exit codes are part of shoal's interface (documented in the README): scripts branch on them.
 */
export const ExitCode = {
  ok: 0,
  failed: 1,
  badInput: 2,
  locked: 3,
  internal: 70,
} as const;

/** An error shoal expects and explains in one line; anything else is a bug and gets a stack trace. */
export class ShoalError extends Error {
  readonly exitCode: number;
  readonly hint: string | undefined;

  constructor(
    message: string,
    options: { exitCode?: number; hint?: string; cause?: unknown } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = new.target.name;
    this.exitCode = options.exitCode ?? ExitCode.failed;
    this.hint = options.hint;
  }

  /** The lines printed to the user, without the "shoal: " prefix. */
  lines(): string[] {
    return [this.hint ? `${this.message}; ${this.hint}` : this.message];
  }
}

/**
 * A host of the fleet (a libvirt host) that shoal cannot reach now: its VMs are neither known to
 * run nor to be stopped, and are left as they are.
 */
export class HostUnreachable extends ShoalError {
  constructor(
    readonly host: string,
    why: string,
  ) {
    super(`host ${host} cannot be reached: ${why}`, {
      hint: "its VMs are left as they are until it is back",
    });
  }
}

/** Bad input a user can fix: a flag, a name, a path, a size. Nothing was changed. */
export class UserError extends ShoalError {
  constructor(message: string, hint?: string) {
    super(
      message,
      hint === undefined ? { exitCode: ExitCode.badInput } : { exitCode: ExitCode.badInput, hint },
    );
  }
}

export interface SpecProblem {
  file: string;
  line: number;
  col: number;
  /** Dotted field path such as `vm.layer.size` or `vms[2].name`; `(file)` for the document itself. */
  field: string;
  message: string;
}

export function formatProblem(problem: SpecProblem): string {
  return `${problem.file}:${problem.line}:${problem.col} ${problem.field}: ${problem.message}`;
}

/** Every problem found in a fleet file at once, each with its position. */
export class SpecError extends ShoalError {
  readonly problems: readonly SpecProblem[];

  constructor(problems: readonly SpecProblem[]) {
    const first = problems[0];
    super(first ? formatProblem(first) : "invalid fleet file", { exitCode: ExitCode.badInput });
    this.problems = problems;
  }

  override lines(): string[] {
    return this.problems.map(formatProblem);
  }
}

/** The exit status of a command the user ran through shoal (`shoal ssh VM CMD`), passed on silently. */
export class PassedOnExit extends ShoalError {
  constructor(code: number) {
    super(`the command exited with code ${code}`, { exitCode: code });
  }

  override lines(): string[] {
    return [];
  }
}

/** For a probe whose expected failure means "no answer": undefined for a ShoalError, a bug thrown on. */
export function undefinedUnlessBug(error: unknown): undefined {
  if (error instanceof ShoalError) return undefined;
  throw error;
}
