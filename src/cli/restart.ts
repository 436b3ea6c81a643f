import { powerOnCommand } from "./start.js";

export function restartCommand() {
  return powerOnCommand("restart");
}
