// The app's icons, drawn at build time as PNGs (no binary files in the repository): a white ring around a
// dot (Athena's owl eye) on the brand violet. "any" icons are rounded squares on a transparent ground;
// the maskable one fills its square, with the mark inside the safe zone (the central circle of 40% of the
// size in radius) that every launcher's mask keeps.
import { deflateSync } from "node:zlib";

/** --accent-violet of app.css (light scheme). */
const VIOLET = [0x7c, 0x3a, 0xed];
const WHITE = [0xff, 0xff, 0xff];

/** The icons the manifest lists: file name, size in pixels, purpose. */
export const ICONS = [
  { file: "icon-192.png", size: 192, purpose: "any" },
  { file: "icon-512.png", size: 512, purpose: "any" },
  { file: "icon-maskable-512.png", size: 512, purpose: "maskable" },
];

/** The PNG (8-bit RGBA) of one icon. */
export function drawIcon(size, purpose) {
  const rows = [];
  const centre = size / 2;
  const ring = { radius: 0.27 * size, half: 0.045 * size };
  const dot = 0.085 * size;
  const corner = purpose === "maskable" ? 0 : 0.22 * size;
  for (let y = 0; y < size; y++) {
    const row = Buffer.alloc(1 + size * 4); // filter byte 0: none
    for (let x = 0; x < size; x++) {
      const px = x + 0.5;
      const py = y + 0.5;
      const ground = coverage(-roundedSquare(px, py, size, corner));
      const r = Math.hypot(px - centre, py - centre);
      const mark = Math.max(coverage(ring.half - Math.abs(r - ring.radius)), coverage(dot - r));
      const colour = VIOLET.map((v, i) => Math.round(v + (WHITE[i] - v) * mark));
      row.set([...colour, Math.round(255 * ground)], 1 + x * 4);
    }
    rows.push(row);
  }
  return png(size, size, Buffer.concat(rows));
}

/** How much of a pixel lies inside a shape whose signed distance (positive inside) is `distance`. */
function coverage(distance) {
  return Math.min(1, Math.max(0, distance + 0.5));
}

/** Signed distance from (x, y) to a square of side `size` with corners rounded by `radius`; negative
 * inside. */
function roundedSquare(x, y, size, radius) {
  const half = size / 2;
  const qx = Math.abs(x - half) - (half - radius);
  const qy = Math.abs(y - half) - (half - radius);
  const outside = Math.hypot(Math.max(qx, 0), Math.max(qy, 0));
  return outside + Math.min(Math.max(qx, qy), 0) - radius;
}

function png(width, height, raw) {
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header.set([8, 6, 0, 0, 0], 8); // 8 bits per channel, RGBA, deflate, adaptive filters, no interlace
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", header),
    chunk("IDAT", deflateSync(raw, { level: 9 })),
    chunk("IEND", Buffer.alloc(0)),
  ]);
}

function chunk(type, data) {
  const length = Buffer.alloc(4);
  length.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, "ascii"), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([length, body, crc]);
}

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) {
    c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  }
  return c >>> 0;
});

function crc32(bytes) {
  let c = 0xffffffff;
  for (const byte of bytes) {
    c = CRC_TABLE[(c ^ byte) & 0xff] ^ (c >>> 8);
  }
  return (c ^ 0xffffffff) >>> 0;
}
