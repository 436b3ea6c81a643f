import {
  type CheckResult,
  missingTool,
  type ToolRequirement,
  versionLine,
} from "../core/doctor.js";
import { pathExists } from "./paths.js";
import { CommandFailed, type Runner } from "./runner.js";

/**
 * The host checks behind `shoal doctor` that every backend shares (each backend's own are in its
 * folder's doctor.ts): they only look (probes), never change anything, and each says what it
 * found and, when something is wrong, how to fix it.
 */

async function checkTool(runner: Runner, tool: ToolRequirement): Promise<CheckResult> {
  try {
    const result = await runner.run({
      argv: tool.versionArgv,
      probe: true,
      okCodes: "any",
      timeoutMs: 10_000,
    });
    const version = tool.versionless ? "" : versionLine(`${result.stdout}\n${result.stderr}`);
    return { name: tool.name, level: "ok", detail: version || "installed" };
  } catch (error) {
    if (error instanceof CommandFailed && error.code === null) return missingTool(tool);
    throw error;
  }
}

export function checkTools(
  runner: Runner,
  tools: readonly ToolRequirement[],
): Promise<CheckResult[]> {
  return Promise.all(tools.map((tool) => checkTool(runner, tool)));
}

/** A device node a backend needs; a missing one comes with its kernel module. */
export async function deviceCheck(
  name: string,
  path: string,
  text: { readonly present: string; readonly missing: string; readonly module: string },
): Promise<CheckResult> {
  return (await pathExists(path))
    ? { name, level: "ok", detail: text.present }
    : { name, level: "fail", detail: `missing: ${text.missing}`, fix: `modprobe ${text.module}` };
}
