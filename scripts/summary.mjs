// Prints the vitest runs' counts as the one line CI reads: "N passed, N failed[, N skipped]".
import { readFileSync } from "node:fs";

let passed = 0;
let failed = 0;
let skipped = 0;
for (const file of process.argv.slice(2)) {
  let report;
  try {
    report = JSON.parse(readFileSync(file, "utf8"));
  } catch {
    // A run that crashed before reporting counts as one failure.
    failed += 1;
    continue;
  }
  passed += report.numPassedTests;
  skipped += report.numPendingTests + report.numTodoTests;
  // A file that failed to load has no failed tests but is a failure all the same.
  failed += report.numFailedTests || (report.numFailedTestSuites > 0 ? 1 : 0);
}
console.log(`${passed} passed, ${failed} failed${skipped > 0 ? `, ${skipped} skipped` : ""}`);
