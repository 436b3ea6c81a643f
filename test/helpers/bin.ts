import { fileURLToPath } from "node:url";

/** The built shoal binary, as a user runs it (`scripts/setup` builds it). */
export const SHOAL = fileURLToPath(new URL("../../bin/shoal.js", import.meta.url));
