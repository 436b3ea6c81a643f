import { shutdownCommand } from "./down.js";

export function stopCommand() {
  return shutdownCommand("stop");
}
