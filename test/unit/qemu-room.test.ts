import { describe, expect, it } from "vitest";
import { parseMeminfo, qemuShortfall } from "../../src/backends/qemu/room.js";

const room = { cpus: 2, memoryMiB: 24_105, availableMiB: 23_000 };
const tiny = (name: string) => ({ name, memoryMiB: 128, vcpus: 1 });

describe("room for QEMU VMs on this host", () => {
  it("reads MemTotal and MemAvailable", () => {
    expect(
      parseMeminfo(
        "MemTotal:       24683520 kB\nMemFree:        2 kB\nMemAvailable:   24296448 kB\n",
      ),
    ).toEqual({ memoryMiB: 24_105, availableMiB: 23_727 });
  });

  it("takes guests whose memory adds up to what is available", () => {
    expect(qemuShortfall([], room)).toBeUndefined();
    const many = Array.from({ length: 179 }, (_, i) => tiny(`vm-${i}`));
    expect(qemuShortfall(many, room)).toBeUndefined();
    expect(qemuShortfall([...many, tiny("vm-180")], room)).toEqual({
      what: "the 180 VMs to start have 23040 MiB of memory together; this host has 2 CPUs and 24105 MiB of memory, 23000 MiB of it available",
      fix: "start fewer VMs (`shoal start NAME...`), give them less memory:, stop others, or `up --overcommit` (the out-of-memory killer ends VMs if they use it all)",
    });
  });

  it("with --overcommit, takes guests whose memory adds up to more, but still no VM larger than the host", () => {
    const many = Array.from({ length: 200 }, (_, i) => tiny(`vm-${i}`));
    expect(qemuShortfall(many, room, true)).toBeUndefined();
    expect(qemuShortfall([{ name: "big", memoryMiB: 32_768, vcpus: 1 }], room, true)?.what).toBe(
      "VM big has 32768 MiB of memory; this host has 2 CPUs and 24105 MiB of memory, 23000 MiB of it available",
    );
    expect(qemuShortfall([{ name: "wide", memoryMiB: 128, vcpus: 3 }], room, true)?.fix).toBe(
      "give it at most 2 vcpus:",
    );
  });

  it("refuses a VM with more vCPUs than the host's CPUs, or more memory than the host has", () => {
    expect(qemuShortfall([tiny("a"), { name: "wide", memoryMiB: 128, vcpus: 4 }], room)).toEqual({
      what: "VM wide has 4 vCPUs; this host has 2 CPUs and 24105 MiB of memory, 23000 MiB of it available",
      fix: "give it at most 2 vcpus:",
    });
    expect(qemuShortfall([{ name: "big", memoryMiB: 32_768, vcpus: 2 }], room)).toEqual({
      what: "VM big has 32768 MiB of memory; this host has 2 CPUs and 24105 MiB of memory, 23000 MiB of it available",
      fix: "give it at most 24105M of memory:",
    });
  });
});
