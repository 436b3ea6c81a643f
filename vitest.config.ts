import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
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
