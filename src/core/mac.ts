/** MAC addresses are handled as 6 bytes and printed lowercase with colons, as xl, QEMU and dnsmasq take them. */
export type Mac = string;

const MAC_TEXT = /^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$/;

/** A MAC as shoal writes it (records, configs): lowercase. */
export const PRINTED_MAC = /^[0-9a-f]{2}(:[0-9a-f]{2}){5}$/;

export const MAC_RULE = "six hex byte pairs separated by colons, like 52:54:00:12:34:56";

export function parseMac(text: string): Mac | undefined {
  return MAC_TEXT.test(text) ? text.toLowerCase() : undefined;
}

/** Why a MAC cannot be a VM's address, or undefined when it can. */
export function checkUnicastMac(mac: Mac): string | undefined {
  const first = Number.parseInt(mac.slice(0, 2), 16);
  if (first & 1) return `${mac} is a multicast address; the first byte must be even`;
  if (mac === "00:00:00:00:00:00") return "00:00:00:00:00:00 is not a usable address";
  return undefined;
}

export function macFromBytes(oui: string, suffix: Uint8Array): Mac {
  const hex = [...suffix.subarray(0, 3)].map((byte) => byte.toString(16).padStart(2, "0"));
  return `${oui}:${hex.join(":")}`;
}
