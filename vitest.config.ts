import { basename } from "node:path";
import { defineConfig } from "vitest/config";
import { BaseSequencer, type TestSpecification } from "vitest/node";

/**
 * The end-to-end files in the order they run (a file not named here runs last): first those whose
 * VMs leave a core idle while the Debian images build in the background (test/e2e/image-cache.ts),
 * then those that need them; the Xen lab, which keeps both cores busy on its own, at the end.
 */
const E2E_ORDER = [
  "union-root",
  "host-network",
  "lifecycle",
  "debian",
  "upgrade",
  "density",
  "libvirt",
  "xen",
];

/** Vitest's order (slow and failed files first), with the end-to-end files in E2E_ORDER's. */
class E2eOrder extends BaseSequencer {
  override async sort(files: TestSpecification[]): Promise<TestSpecification[]> {
    const rank = (file: TestSpecification) => {
      if (file.project.name !== "e2e") return -1;
      const found = E2E_ORDER.indexOf(basename(file.moduleId, ".test.ts"));
      return found === -1 ? E2E_ORDER.length : found;
    };
    return (await super.sort(files)).sort((a, b) => rank(a) - rank(b));
  }
}

export default defineConfig({
  test: {
    sequence: { sequencer: E2eOrder },
    projects: [
      { test: { name: "unit", include: ["test/unit/**/*.test.ts"] } },
      {
        test: {
          name: "integration",
          include: ["test/integration/**/*.test.ts"],
          globalSetup: ["test/integration/build.ts"],
          testTimeout: 60_000,
          // A file's beforeAll builds the tiny image: seconds, but far more than 10 on a busy host.
          hookTimeout: 300_000,
        },
      },
      {
        test: {
          name: "e2e",
          include: ["test/e2e/**/*.test.ts"],
          globalSetup: ["test/integration/build.ts", "test/e2e/image-cache.ts"],
          // Real VMs under software emulation: one file at a time, each VM given minutes.
          fileParallelism: false,
          // Concurrent tests (one VM each) and concurrent describes run at most two at a time in each
          // group: one per core here (nested concurrent describes multiply it).
          maxConcurrency: 2,
          testTimeout: 900_000,
          hookTimeout: 900_000,
        },
      },
    ],
  },
});
