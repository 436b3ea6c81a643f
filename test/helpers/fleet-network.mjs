/**
 * Runs one operation on a fleet's network (src/net/network.ts, run under tsx) in the network
 * namespace this process runs in, which stands in for the host: tests start it under
 * `nsenter --net=...`, so that what shoal puts into "the host" (the NAT veth, its nft table,
 * forwarding) lands in the test's namespace. argv[2] is JSON: { op: "ensure" | "remove",
 * stateDir, fleet, mode, spec }. A refusal shoal explains ends it with exit 2, the message on stderr.
 */
import { ShoalError } from "../../src/errors.js";
import { ProcessRunner } from "../../src/host/runner.js";
import { FleetNetwork } from "../../src/net/network.js";
import { stateLayout } from "../../src/state/layout.js";

const { op, stateDir, fleet, mode, spec } = JSON.parse(process.argv[2] ?? "{}");
const layout = stateLayout(stateDir);
const owner = { root: layout.root, fleet };
const network = new FleetNetwork(new ProcessRunner(), layout.fleet(fleet).net, owner, mode);
try {
  if (op === "ensure") await network.ensure(spec);
  else if (op === "remove") await network.remove();
  else throw new Error(`unknown operation ${op}`);
} catch (error) {
  if (!(error instanceof ShoalError)) throw error;
  process.stderr.write(`${error.message}\n`);
  process.exitCode = 2;
}
