import { fileURLToPath } from "node:url";

/**
 * The package's root, for the files shoal ships beside its code (guest scripts, hotplug scripts,
 * package.json). This module sits one folder below the root both as source (src/assets.ts, which
 * the tests import) and inside the bundle (dist/shoal.js), so one relative URL serves both.
 */
const PACKAGE_ROOT = new URL("../", import.meta.url);

/** A path under the package's root, such as "src/guest/". */
export function packagePath(relative: string): string {
  return fileURLToPath(new URL(relative, PACKAGE_ROOT));
}
