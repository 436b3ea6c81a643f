import { describe, expect, it } from "vitest";
import type { VmSpec } from "../../src/core/fleet.js";
import { DHCP_EXPORT_FORMATS, renderReservations } from "../../src/core/render/dhcp-export.js";
import { fleetOf } from "../helpers/fleet.js";

// One derived VM and one with a given MAC and address, so both paths to an identity are covered.
const fleet = fleetOf(`name: lab
count: 2
network: { subnet: 10.20.30.0/24 }
vm: { name: "web-{n}" }
vms:
  - { name: web-2, ip: 10.20.30.200, mac: "52:54:00:aa:bb:cc" }
`);
const input = { fleet: fleet.name, subnet: fleet.subnet, vms: fleet.vms };
const [first] = fleet.vms as [VmSpec, VmSpec];

describe("DHCP reservations for a DHCP server of the user's", () => {
  it("are dhcp-host lines for dnsmasq", () => {
    expect(renderReservations("dnsmasq", input)).toBe(`\
# DHCP reservations of shoal fleet lab, planned in subnet 10.20.30.0/24 with gateway 10.20.30.1;
# from \`shoal export dhcp --format dnsmasq\`: export them again whenever the fleet file changes.
# dnsmasq serves them only with a dhcp-range over 10.20.30.0/24 ("static" is enough).
dhcp-host=52:54:00:2c:24:06,10.20.30.2,web-1,infinite
dhcp-host=52:54:00:aa:bb:cc,10.20.30.200,web-2,infinite
`);
  });

  it("are host declarations in a group for ISC dhcpd, named after fleet and VM", () => {
    expect(renderReservations("isc", input)).toBe(`\
# DHCP reservations of shoal fleet lab, planned in subnet 10.20.30.0/24 with gateway 10.20.30.1;
# from \`shoal export dhcp --format isc\`: export them again whenever the fleet file changes.
# They belong in a dhcpd.conf that declares subnet 10.20.30.0/24 itself.
group {
  host lab-web-1 { hardware ethernet 52:54:00:2c:24:06; fixed-address 10.20.30.2; option host-name "web-1"; }
  host lab-web-2 { hardware ethernet 52:54:00:aa:bb:cc; fixed-address 10.20.30.200; option host-name "web-2"; }
}
`);
  });

  const unrenderable: [string, Partial<VmSpec>, RegExp][] = [
    ["a hostname with a space", { hostname: "web 1" }, /^internal: hostname "web 1"/],
    ["a hostname with a quote", { hostname: 'web"1' }, /^internal: hostname/],
    ["an uppercase MAC", { mac: "52:54:00:2C:24:06" }, /^internal: MAC/],
    ["an address with a comma", { ip: "10.20.30.2,10.20.30.3" }, /^internal: IPv4 address/],
  ];
  it.each(unrenderable)(
    "refuse %s that slipped past validation, in every format",
    (_what, bad, message) => {
      for (const format of DHCP_EXPORT_FORMATS) {
        expect(() => renderReservations(format, { ...input, vms: [{ ...first, ...bad }] })).toThrow(
          message,
        );
      }
    },
  );

  it("refuse a VM name or fleet name that would break an ISC host declaration or a comment", () => {
    expect(() =>
      renderReservations("isc", { ...input, vms: [{ ...first, name: "web-1 {" }] }),
    ).toThrow(/^internal: VM name/);
    for (const format of DHCP_EXPORT_FORMATS) {
      expect(() => renderReservations(format, { ...input, fleet: "lab\ndhcp-host=x" })).toThrow(
        /^internal: fleet name/,
      );
    }
  });

  it("refuse a gateway that is not an IPv4 address", () => {
    const subnet = { ...fleet.subnet, gateway: 2 ** 32 };
    expect(() => renderReservations("dnsmasq", { ...input, subnet })).toThrow(/^internal: gateway/);
  });
});
