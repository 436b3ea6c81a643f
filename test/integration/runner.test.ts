import { readFile, stat, symlink, writeFile } from "node:fs/promises";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { CommandFailed, ProcessRunner } from "../../src/host/runner.js";
import { useTempDirs } from "../helpers/tmp.js";

const tempDir = useTempDirs();

describe("the command runner", () => {
  it("runs an argv without a shell and captures its output", async () => {
    const result = await new ProcessRunner().run({ argv: ["printf", "%s|", "a b", "$HOME", ";"] });
    expect(result).toEqual({ code: 0, stdout: "a b|$HOME|;|", stderr: "" });
  });

  it("runs commands with LANG=C and LC_ALL=C, whatever the caller's locale", async () => {
    const result = await new ProcessRunner().run({
      argv: ["sh", "-c", 'echo "$LANG $LC_ALL $EXTRA"'],
      env: { EXTRA: "x", LANG: "de_DE.UTF-8" },
    });
    expect(result.stdout).toBe("C C x\n");
  });

  it("passes input on stdin", async () => {
    expect((await new ProcessRunner().run({ argv: ["cat"], input: "hello" })).stdout).toBe("hello");
  });

  it("fails with the argv, the exit code and the tail of stderr", async () => {
    const script = 'for i in $(seq 1 15); do echo "line $i" >&2; done; exit 3';
    const failure = await new ProcessRunner()
      .run({ argv: ["sh", "-c", script] })
      .catch((error: unknown) => error);
    expect(failure).toBeInstanceOf(CommandFailed);
    const failed = failure as CommandFailed;
    expect(failed.argv).toEqual(["sh", "-c", script]);
    expect(failed.code).toBe(3);
    expect(failed.stderrTail.split("\n")).toEqual(
      Array.from({ length: 10 }, (_, i) => `line ${i + 6}`),
    );
    expect(failed.message.split("\n")[0]).toBe(
      `command failed (exited with code 3): sh -c '${script}'`,
    );
  });

  it("treats the codes a command answers with as results, not failures", async () => {
    const result = await new ProcessRunner().run({ argv: ["sh", "-c", "exit 1"], okCodes: [1] });
    expect(result.code).toBe(1);
  });

  it("says when a program is not installed", async () => {
    await expect(new ProcessRunner().run({ argv: ["shoal-no-such-program"] })).rejects.toThrow(
      "command failed (shoal-no-such-program is not installed or not on PATH): shoal-no-such-program",
    );
  });

  it("kills a command that runs past its timeout", async () => {
    const started = Date.now();
    await expect(
      new ProcessRunner().run({ argv: ["sleep", "30"], timeoutMs: 200 }),
    ).rejects.toThrow("command failed (timed out after 200 ms): sleep 30");
    expect(Date.now() - started).toBeLessThan(5000);
  });

  it("in dry-run mode prints what would change the host and runs only probes", async () => {
    const lines: string[] = [];
    const runner = new ProcessRunner({ dryRun: true, log: (line) => lines.push(line) });
    const change = await runner.run({ argv: ["touch", "/nonexistent/should-not-exist"] });
    const probe = await runner.run({ argv: ["echo", "probed"], probe: true });
    expect(change).toEqual({ code: 0, stdout: "", stderr: "" });
    expect(probe.stdout).toBe("probed\n");
    expect(lines).toEqual(["would run: touch /nonexistent/should-not-exist"]);
  });

  it("traces every command when asked, quoted so it can be pasted into a shell", async () => {
    const lines: string[] = [];
    await new ProcessRunner({ trace: true, log: (line) => lines.push(line) }).run({
      argv: ["echo", "a b", "it's"],
    });
    expect(lines).toEqual([`+ echo 'a b' "it's"`]);
  });

  it("launches a program in a session of its own, its output appended to a file never reached through a link", async () => {
    const dir = await tempDir();
    const output = join(dir, "out.log");
    await writeFile(output, "before\n");
    const runner = new ProcessRunner();
    const launched = await runner.launch({
      argv: ["sh", "-c", 'echo "out $(ps -o sid= -p $$) $$"; echo err >&2; read -r x; exit 3'],
      output,
    });
    // No input: `read` meets end of file at once.
    expect(await launched?.ended).toBe(3);
    const [before, out, err] = (await readFile(output, "utf8")).trim().split("\n");
    const [, sid, pid] = out?.trim().split(/\s+/) ?? [];
    expect([before, err, pid]).toEqual(["before", "err", String(launched?.pid)]);
    // The session's leader: the terminal's Ctrl-C does not reach it.
    expect(sid).toBe(pid);

    const elsewhere = join(dir, "elsewhere");
    await symlink(elsewhere, join(dir, "link.log"));
    await expect(runner.launch({ argv: ["true"], output: join(dir, "link.log") })).rejects.toThrow(
      /ELOOP/,
    );
    await expect(stat(elsewhere)).rejects.toThrow(/ENOENT/);
    const missing = runner.launch({ argv: ["no-such-program-here"], output });
    await expect(missing).rejects.toThrow(/no-such-program-here is not installed or not on PATH/);
  });
});
