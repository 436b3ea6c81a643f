import { execFileSync } from "node:child_process";

/** Integration tests run the real `shoal` binary, so it is built from the current sources first. */
export default function setup(): void {
  execFileSync("npm", ["run", "--silent", "build"], { stdio: "inherit" });
}
