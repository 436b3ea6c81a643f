import { type CheckResult, impairmentCheck } from "../../core/doctor.js";
import type { HostSpec } from "../../core/hosts.js";
import { HostUnreachable } from "../../errors.js";
import { runnerOn } from "../../host/remote.js";
import type { Runner } from "../../host/runner.js";
import { impairmentSupport } from "../../net/impairments.js";
import { poolName } from "./names.js";

/**
 * What each host of a fleet must give: a libvirt daemon reachable by its URI, with the driver the
 * host's URI names; SSH as root for the fleet's network (ip and bridge there), with VXLAN and
 * bridges in its kernel; and shoal's storage pool, made on first use. What the host's kernel can do
 * to the VMs' links (impairments) is shown too.
 */
export async function checkLibvirtHost(
  runner: Runner,
  host: HostSpec,
  stateRoot: string,
): Promise<CheckResult[]> {
  const name = `host ${host.name}`;
  const version = await runner.run({
    argv: ["virsh", "-q", "-c", host.uri, "version", "--daemon"],
    probe: true,
    okCodes: "any",
  });
  if (version.code !== 0) {
    const why = version.stderr.trim().split("\n").slice(-1)[0] ?? "";
    return [
      {
        name,
        level: "fail",
        detail: `libvirt at ${host.uri} does not answer: ${why}`,
        fix: "start libvirtd there, and check that this machine reaches it (ssh as root for +ssh URIs)",
      },
    ];
  }
  const versions = Object.fromEntries(
    [
      ...version.stdout.matchAll(
        /^Running hypervisor: (\S+) (\S+)$|^Running against daemon: (\S+)$/gm,
      ),
    ].map((match) => (match[1] ? ["hypervisor", `${match[1]} ${match[2]}`] : ["daemon", match[3]])),
  );
  const results: CheckResult[] = [
    {
      name,
      level: "ok",
      detail: `libvirt ${versions.daemon ?? "?"}, ${host.driver} driver (${versions.hypervisor ?? "hypervisor ?"}) at ${host.uri}`,
    },
  ];
  const pool = poolName(stateRoot);
  const info = await runner.run({
    argv: ["virsh", "-q", "-c", host.uri, "pool-info", pool],
    probe: true,
    okCodes: "any",
  });
  results.push({
    name: `${name} pool`,
    level: "ok",
    detail:
      info.code === 0
        ? `storage pool ${pool} is there`
        : `storage pool ${pool} is made by the first \`shoal up\``,
  });
  // The fleet's network there: a bridge and a VXLAN device, tried and removed at once.
  const probe = await runnerOn(runner, host)
    .run({
      argv: ["unshare", "--net", "ip", "-batch", "-"],
      input:
        "link add b0 type bridge\nlink add v0 type vxlan id 1 dstport 4789 nolearning\nlink set v0 master b0\n",
      probe: true,
      okCodes: "any",
    })
    .catch((error: unknown) => {
      if (!(error instanceof HostUnreachable)) throw error;
      return { code: -1, stdout: "", stderr: error.message };
    });
  results.push(
    probe.code === 0
      ? {
          name: `${name} network`,
          level: "ok",
          detail: "SSH as root works; bridges and VXLAN work",
        }
      : {
          name: `${name} network`,
          level: "fail",
          detail: `SSH as root, a bridge or a VXLAN device failed there: ${probe.stderr.trim().split("\n").slice(-1)[0] ?? ""}`,
          fix: "shoal needs ssh as root to each host (key in root's authorized_keys) and a kernel with bridge and vxlan",
        },
  );
  if (probe.code === 0) {
    // What `shoal net` can do to the VMs' links there, as for this machine's own fleets.
    const support = await impairmentSupport(runnerOn(runner, host));
    results.push({ ...impairmentCheck(support), name: `${name} impairments` });
  }
  return results;
}
