import { convergeCommand } from "./up.js";

export function createCommand() {
  return convergeCommand("created");
}
