import { describe, expect, it } from "vitest";
import {
  guestConsoleLog,
  parseXlList,
  parseXlUptimeSeconds,
  xenconsoledGuestLogDir,
} from "../../src/core/xen.js";

const listing = (state: string) =>
  [
    "Name                                        ID   Mem VCPUs\tState\tTime(s)",
    `lab.vm-1                                     3   128     1     ${state}       1.9`,
    "",
  ].join("\n");

describe("xl list", () => {
  it("reads running and blocked domains as running", () => {
    for (const state of ["r-----", "-b----", "------"]) {
      expect(parseXlList(listing(state), "lab.vm-1")).toEqual({ kind: "running" });
    }
  });

  it("takes a paused domain for a start cut short: not running", () => {
    expect(parseXlList(listing("--p---"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "it is paused (a start cut short?)",
    });
  });

  it("tells a powered-off domain from a crashed one by the shutdown reason", () => {
    expect(parseXlList(listing("--ps--"), "lab.vm-1")).toEqual({ kind: "shut-down" });
    expect(parseXlList(listing("---sc-"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "Xen reports a crash",
    });
    expect(parseXlList(listing("---sw-"), "lab.vm-1")).toEqual({
      kind: "crashed",
      reason: "the watchdog fired",
    });
    // xl's monitor restarts a rebooting domain at once.
    expect(parseXlList(listing("---sr-"), "lab.vm-1")).toEqual({ kind: "running" });
  });

  it("sees a dying domain", () => {
    expect(parseXlList(listing("-b---d"), "lab.vm-1")).toEqual({ kind: "dying" });
  });

  it("finds only the domain asked for", () => {
    expect(parseXlList(listing("-b----"), "lab.vm-10")).toBeUndefined();
    expect(parseXlList(listing("-b----"), "lab.vm")).toBeUndefined();
  });
});

describe("xl uptime", () => {
  const uptime = (value: string) =>
    `Name                                ID Uptime\nlab.vm-1   3 ${value}\n`;

  it("reads hours, minutes and seconds, and days", () => {
    expect(parseXlUptimeSeconds(uptime(" 0:01:05"), "lab.vm-1")).toBe(65);
    expect(parseXlUptimeSeconds(uptime("1 day,  2:00:00"), "lab.vm-1")).toBe(93_600);
    expect(parseXlUptimeSeconds(uptime("3 days, 0:00:01"), "lab.vm-1")).toBe(259_201);
  });

  it("has no answer for another domain", () => {
    expect(parseXlUptimeSeconds(uptime(" 0:01:05"), "lab.vm-2")).toBeUndefined();
  });
});

describe("xenconsoled's guest logs", () => {
  it("are written with --log=guest or all, to the default directory or --log-dir", () => {
    expect(xenconsoledGuestLogDir(["/usr/sbin/xenconsoled", "--log=guest"])).toBe(
      "/var/log/xen/console",
    );
    expect(
      xenconsoledGuestLogDir([
        "xenconsoled",
        "--pid-file=/run/x.pid",
        "--log",
        "all",
        "--log-dir=/srv/c",
      ]),
    ).toBe("/srv/c");
    expect(xenconsoledGuestLogDir(["xenconsoled", "--log=all", "--log-dir", "/srv/d"])).toBe(
      "/srv/d",
    );
  });

  it("are not written without --log, or with hv only", () => {
    expect(
      xenconsoledGuestLogDir(["/usr/sbin/xenconsoled", "--pid-file=/run/x.pid"]),
    ).toBeUndefined();
    expect(xenconsoledGuestLogDir(["xenconsoled", "--log=hv"])).toBeUndefined();
  });

  it("are named after the domain", () => {
    expect(guestConsoleLog("/var/log/xen/console/", "lab.vm-1")).toBe(
      "/var/log/xen/console/guest-lab.vm-1.log",
    );
  });
});
