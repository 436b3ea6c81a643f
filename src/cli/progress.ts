import ora from "ora";

/** Runs one long step with a spinner on a terminal, and a line with its duration either way. */
export async function step<T>(title: string, work: () => Promise<T>): Promise<T> {
  const spinner = ora({ text: title, stream: process.stderr }).start();
  const started = Date.now();
  try {
    const result = await work();
    spinner.succeed(`${title} (${((Date.now() - started) / 1000).toFixed(1)} s)`);
    return result;
  } catch (error) {
    spinner.fail(title);
    throw error;
  }
}

export type Step = typeof step;
