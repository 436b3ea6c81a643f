import ora from "ora";

/**
 * Runs one long step: a spinner while it runs on a terminal, then a line with its duration. Logs
 * and CI get the plain lines only.
 */
export async function step<T>(title: string, work: () => Promise<T>): Promise<T> {
  const terminal = process.stderr.isTTY === true;
  const spinner = terminal ? ora({ text: title, stream: process.stderr }).start() : undefined;
  const started = Date.now();
  try {
    const result = await work();
    const done = `${title} (${((Date.now() - started) / 1000).toFixed(1)} s)`;
    if (spinner) spinner.succeed(done);
    else process.stderr.write(`done: ${done}\n`);
    return result;
  } catch (error) {
    if (spinner) spinner.fail(title);
    else process.stderr.write(`failed: ${title}\n`);
    throw error;
  }
}
