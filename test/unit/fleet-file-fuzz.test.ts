import { readFileSync } from "node:fs";
import { writeFile } from "node:fs/promises";
import { join } from "node:path";
import fc from "fast-check";
import { describe, expect, it } from "vitest";
import { stringify } from "yaml";
import { MAX_FLEET_VMS } from "../../src/core/net.js";
import { SpecError, UserError } from "../../src/errors.js";
import { loadFleetFile, parseFleetBytes } from "../../src/spec/load.js";
import { useTempDirs } from "../helpers/tmp.js";

/**
 * Property: whatever the bytes, the loader returns a fleet or throws a SpecError (exit 2) whose
 * every problem has the file, a line and column from 1 and a message, none of it raw control
 * characters; never another error (exit 70), and never slowly. A failure prints fast-check's seed
 * and path; SHOAL_FUZZ_SEED=N replays a run, and fast-check shrinks the failing file first.
 */

const SEED = Number(process.env.SHOAL_FUZZ_SEED ?? 14_062_024);
/** Each case is a small file; one taking this long means something grows faster than the file. */
const CASE_LIMIT_MS = 2000;
const FILE = "fuzz.yaml";

const KEY =
  "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGXKyw6Dw0aLSWTKhZ9mSD3wrzSUWaGSiGBOSkbp5XW8 you@host";

function unsafeCharacters(text: string): string[] {
  return [...text].filter((char) => {
    const code = char.codePointAt(0) ?? 0;
    return code < 0x20 || (code >= 0x7f && code <= 0x9f) || (code >= 0x202a && code <= 0x202e);
  });
}

/** The property, for one file's bytes. */
function loads(bytes: Uint8Array): void {
  const started = performance.now();
  try {
    const fleet = parseFleetBytes(bytes, FILE);
    expect(fleet.vms.length).toBeLessThanOrEqual(MAX_FLEET_VMS);
  } catch (error) {
    if (!(error instanceof SpecError)) throw error;
    expect(error.exitCode).toBe(2);
    expect(error.problems.length).toBeGreaterThan(0);
    for (const problem of error.problems) {
      expect(problem.file).toBe(FILE);
      expect(Number.isInteger(problem.line) && problem.line >= 1, `line ${problem.line}`).toBe(
        true,
      );
      expect(Number.isInteger(problem.col) && problem.col >= 1, `col ${problem.col}`).toBe(true);
      expect(problem.field.length).toBeGreaterThan(0);
      expect(problem.message.length).toBeGreaterThan(0);
    }
    for (const line of error.lines()) expect(unsafeCharacters(line), line).toEqual([]);
  }
  const took = performance.now() - started;
  if (took > CASE_LIMIT_MS) throw new Error(`took ${Math.round(took)} ms`);
}

// Values for each field of the schema: mostly good ones, so that many files pass and the
// cross-field rules run, and now and then a bad one.
const anyScalar = fc.oneof(
  fc.string({ maxLength: 12 }),
  fc.integer({ min: -5, max: 5000 }),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
);
function mostly<T>(good: fc.Arbitrary<T>, ...bad: fc.Arbitrary<unknown>[]): fc.Arbitrary<unknown> {
  return fc.oneof(
    { arbitrary: good, weight: 25 },
    { arbitrary: fc.oneof(anyScalar, ...bad), weight: 1 },
  );
}
const label = mostly(
  fc.constantFrom("lab", "a", "web-1", "x".repeat(63)),
  fc.constantFrom("Lab", "-a", "a/b", "..", "", "a b", "x".repeat(64)),
  fc.stringMatching(/^[a-z0-9-]{1,70}$/),
);
const size = mostly(
  fc.constantFrom("128M", "256M", "1G", "1.5G", "512MiB", "2G"),
  fc.constantFrom("1T", "8T", "9T", "16M", "100.5M", "0M", "1K", "128"),
  fc
    .tuple(fc.integer({ min: 0, max: 1 << 20 }), fc.constantFrom("K", "M", "G", "T", "k", "X", ""))
    .map(([n, unit]) => `${n}${unit}`),
);
const kernelParam = mostly(
  fc.constantFrom("quiet", "loglevel=7", "earlycon=uart8250,io,0x3f8", "systemd.setenv=A=b,c"),
  fc.constantFrom(
    "console=tty0",
    "systemd.machine-id=0",
    "rw",
    "init=/bin/sh",
    "shoal.layer=tmpfs",
  ),
  fc.constantFrom("--", "a b", 'a="b"', "x".repeat(3000)),
  fc.stringMatching(/^[A-Za-z0-9_.-]{1,20}(=[!-~]{0,20})?$/),
);
const octet = fc.nat(255);
const ipv4 = mostly(
  octet.map((host) => `10.77.1.${host}`),
  fc.tuple(octet, octet, octet, octet).map((parts) => parts.join(".")),
  fc.constantFrom("10.77.0.1", "10.77.0.0", "10.77.255.255", "1.2.3", "256.0.0.1"),
);
const subnet = mostly(
  fc.constantFrom("10.77.0.0/16", "10.0.0.0/8", "192.168.0.0/16", "100.64.0.0/10"),
  fc.tuple(ipv4, fc.integer({ min: 0, max: 33 })).map(([ip, prefix]) => `${ip}/${prefix}`),
  fc.constantFrom(
    "10.0.0.0/24",
    "192.168.1.0/30",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "0.0.0.0/0",
    "10.77.1.0/16",
  ),
);
const mac = mostly(
  fc.stringMatching(/^52:54:00(:[0-9a-f]{2}){3}$/),
  fc.constantFrom("01:00:5e:00:00:01", "00:16:3e:aa:bb:cc", "zz"),
);
const layer = mostly(
  fc.record(
    {
      type: mostly(fc.constantFrom("disk", "tmpfs"), fc.constant("ram")),
      size,
      on_base_change: mostly(fc.constantFrom("keep", "warn", "reset"), fc.constant("drop")),
      fallback: mostly(fc.constantFrom("none", "tmpfs")),
    },
    { requiredKeys: [] },
  ),
);
const vmSettings = {
  image: mostly(fc.constantFrom("tiny", "debian-12.2"), fc.constantFrom("a..b", ".x")),
  memory: size,
  vcpus: mostly(fc.integer({ min: 1, max: 4 }), fc.integer({ min: -1, max: 300 })),
  layer,
  kernel_args: mostly(fc.array(kernelParam, { maxLength: 4 })),
};
const vmEntry = fc.record(
  {
    // Names the default pattern makes (overrides), or extra VMs that need a fixed address.
    name: mostly(fc.constantFrom("vm-1", "vm-2", "vm-3", "agent-001", "extra"), label),
    ip: ipv4,
    mac,
    ...vmSettings,
  },
  { requiredKeys: ["name"] },
);
const fleetModel = fc.record(
  {
    name: label,
    backend: mostly(fc.constantFrom("qemu", "xl"), fc.constant("kvm")),
    image: vmSettings.image,
    // Mostly small fleets: a thousand VMs per case would spend the run on identities.
    count: mostly(fc.integer({ min: 0, max: 8 }), fc.constantFrom(-1, 1023, 1024, 2000)),
    vm: mostly(
      fc.record(
        {
          name: mostly(
            fc.constantFrom("vm-{n}", "agent-{n:03}"),
            fc.constantFrom("{n}", "x", "{n}{n}"),
          ),
          ...vmSettings,
        },
        { requiredKeys: [] },
      ),
    ),
    vms: mostly(fc.uniqueArray(vmEntry, { maxLength: 4, selector: (entry) => entry.name })),
    network: mostly(
      fc.oneof(
        fc.record({ subnet, gateway: ipv4, nat: mostly(fc.boolean()) }, { requiredKeys: [] }),
        fc.record({
          bridge: mostly(fc.constantFrom("br0", "xenbr0"), fc.constant("br0; reboot")),
          managed: mostly(fc.constant(false)),
        }),
      ),
      fc.record(
        { subnet, bridge: fc.constant("br0"), managed: fc.boolean(), nat: fc.boolean() },
        { requiredKeys: [] },
      ),
    ),
    ssh: fc.record(
      {
        authorized_keys: mostly(
          fc.array(mostly(fc.constant(KEY), fc.constant("ssh-rsa AAAA x")), { maxLength: 3 }),
        ),
      },
      { requiredKeys: [] },
    ),
    // An unknown key now and then; the yaml library leaves out keys whose value is undefined.
    color: fc.oneof(
      { arbitrary: fc.constant(undefined), weight: 15 },
      { arbitrary: anyScalar, weight: 1 },
    ),
  },
  { requiredKeys: ["name"] },
);

/** A fleet model written out by the yaml library in one of its styles. */
const fleetText = fc
  .tuple(
    fleetModel,
    fc.constantFrom("any", "block", "flow") as fc.Arbitrary<"any" | "block" | "flow">,
  )
  .map(([model, collectionStyle]) => stringify(model, { collectionStyle }));

// The examples, lab.yaml's 250 VMs cut to 25: deriving identities is most of a case's time.
const corpus = ["demo.yaml", "lab.yaml", "services.yaml"].map((name) =>
  readFileSync(new URL(`../../examples/${name}`, import.meta.url), "utf8").replace(
    "count: 250",
    "count: 25",
  ),
);

// YAML syntax and hostile content to splice into a file.
const SNIPPETS = [
  "&a ",
  "*a",
  "*nope",
  "&a [*a]",
  "<<: *a\n",
  "<<: 5\n",
  "<<: [*a, 1]\n",
  "!!omap ",
  "!custom ",
  "!!binary ",
  "!!timestamp ",
  "!!set ",
  "! ",
  "!<tag:x> ",
  "{",
  "}",
  "[",
  "]",
  ", ",
  ": ",
  "? ",
  "- ",
  "---\n",
  "...\n",
  "%YAML 1.1\n",
  "%TAG ! tag:x:\n",
  "|\n",
  ">-\n",
  "'",
  '"',
  "#",
  "\t",
  "\r",
  "\u0000",
  "\u001b[2J",
  "\u009b",
  "\u202e",
  "\ufeff",
  "1e400",
  "-0",
  ".nan",
  "-.inf",
  "99999999999999999999",
  "0x1f",
  "0o17",
  "~",
  "null",
  "__proto__: 1\n",
  "[".repeat(80),
  "{a: ".repeat(80),
  "- ".repeat(80),
  "x".repeat(3000),
  "l0: &l0 [a, a, a, a, a, a, a, a, a, a]\nl1: &l1 [*l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0, *l0]\nl2: &l2 [*l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1, *l1]\nl3: &l3 [*l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2, *l2]\nl4: [*l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3, *l3]\n",
  "m0: &m0 {x: 1}\nm1: &m1 {<<: [*m0, *m0]}\nm2: &m2 {<<: [*m1, *m1]}\nm3: {<<: [*m2, *m2]}\n",
].map((snippet) => Buffer.from(snippet));
const BAD_BYTES = [
  [0xff],
  [0xc3],
  [0xe2, 0x82],
  [0xed, 0xa0, 0x80],
  [0xc0, 0xaf],
  [0xf8, 0x88],
].map((bytes) => Buffer.from(bytes));

type Mutation = (bytes: Buffer) => Buffer;
const at = (bytes: Buffer, fraction: number) => Math.floor(fraction * (bytes.length + 1));
const fraction = fc.double({ min: 0, max: 1, maxExcluded: true, noNaN: true });
const mutation: fc.Arbitrary<Mutation> = fc.oneof(
  fc.tuple(fraction, fc.integer({ min: 0, max: 255 })).map(
    ([where, byte]): Mutation =>
      (bytes) => {
        const copy = Buffer.from(bytes);
        if (copy.length > 0) copy[Math.min(at(copy, where), copy.length - 1)] = byte;
        return copy;
      },
  ),
  fraction.map(
    (where): Mutation =>
      (bytes) =>
        bytes.subarray(0, at(bytes, where)),
  ),
  fc.tuple(fraction, fc.constantFrom(...SNIPPETS, ...BAD_BYTES)).map(
    ([where, snippet]): Mutation =>
      (bytes) => {
        const point = at(bytes, where);
        return Buffer.concat([bytes.subarray(0, point), snippet, bytes.subarray(point)]);
      },
  ),
  fc.tuple(fraction, fraction).map(
    ([from, to]): Mutation =>
      (bytes) => {
        // A piece of the file repeated elsewhere: duplicate keys, anchors and whole entries.
        const [start, end] = [at(bytes, from), at(bytes, to)].sort((a, b) => a - b);
        const piece = bytes.subarray(start ?? 0, end ?? 0);
        return Buffer.concat([bytes.subarray(0, end), piece, bytes.subarray(end)]);
      },
  ),
);
const mutated = fc
  .tuple(
    fc.oneof(fleetText, fc.constantFrom(...corpus)),
    fc.array(mutation, { minLength: 1, maxLength: 4 }),
  )
  .map(([text, mutations]) =>
    mutations.reduce<Buffer>((bytes, mutate) => mutate(bytes), Buffer.from(text)),
  );

/** Files of YAML's punctuation and a few words, which reach the parser's rarer corners. */
const tokenSoup = fc
  .array(
    fc.constantFrom(
      "name",
      "lab",
      "vm",
      "vms",
      "count",
      "3",
      "network",
      "subnet",
      ":",
      " ",
      "\n",
      "  ",
      "-",
      "?",
      "[",
      "]",
      "{",
      "}",
      ",",
      "&a",
      "*a",
      "<<",
      "!",
      "!!",
      "#",
      "'",
      '"',
      "|",
      ">",
      "%",
      "---",
      "...",
      "\t",
    ),
    { maxLength: 60 },
  )
  .map((tokens) => Buffer.from(tokens.join("")));

// 10,200 files a run: about 12 s of CPU on this machine. The timeouts leave room for a loaded host.
describe(`the fleet-file loader under fuzzing (seed ${SEED})`, () => {
  const runs = (numRuns: number) => ({ seed: SEED, numRuns });
  console.info(`fleet-file fuzz: seed ${SEED}; replay with SHOAL_FUZZ_SEED=${SEED}`);

  it("fleet files built from the schema's fields, good and bad values", () => {
    fc.assert(
      fc.property(fleetText, (text) => loads(Buffer.from(text))),
      runs(3000),
    );
  }, 120_000);

  it("mutated fleet files: flipped bytes, cuts, spliced YAML syntax, bad UTF-8", () => {
    fc.assert(fc.property(mutated, loads), runs(5500));
  }, 120_000);

  it("YAML token soup and random bytes", () => {
    fc.assert(
      fc.property(fc.oneof(tokenSoup, fc.uint8Array({ maxLength: 200 })), loads),
      runs(1500),
    );
  }, 120_000);

  const tempDir = useTempDirs();
  it("files on disk, read through loadFleetFile", async () => {
    const dir = await tempDir();
    await fc.assert(
      fc.asyncProperty(mutated, async (bytes) => {
        const file = join(dir, FILE);
        await writeFile(file, bytes);
        try {
          await loadFleetFile(file);
        } catch (error) {
          if (!(error instanceof SpecError || error instanceof UserError)) throw error;
          expect(error.exitCode).toBe(2);
        }
      }),
      runs(200),
    );
  }, 120_000);
});
