// Builds the browser client into dist/: app.js (bundled, minified) with its source map, index.html,
// app.css, the web app manifest with its icons (icons.mjs) and the service worker sw.js (src/sw.ts), which
// precaches the app shell under the build's content hash. Envoy serves every file of dist/ when its configuration is rendered, so build before starting
// the mesh (`make run` does). The Kubernetes configuration is rendered without a build, from the list of
// files in build-files.json (the edge image holds the build), so the build fails when it writes others.
import { createHash } from "node:crypto";
import { copyFile, mkdir, readdir, readFile, rm, stat, writeFile } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";
import { drawIcon, ICONS } from "./icons.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const src = path.join(here, "src");
const dist = path.join(here, "dist");
const STATIC_FILES = ["index.html", "app.css"];
const MANIFEST = "manifest.webmanifest";
/** What the service worker precaches: everything the app shell needs to start offline. */
const SHELL_FILES = ["index.html", "app.js", "app.css", MANIFEST, ...ICONS.map((icon) => icon.file)];
/** app.css: --bg (the splash screen) and --surface (the top bar, which the title bar continues). */
const BACKGROUND_COLOUR = "#f8fafc";
const THEME_COLOUR = "#ffffff";

const copyStatic = {
  name: "copy-static",
  setup(build) {
    build.onEnd(async (result) => {
      if (result.errors.length === 0) {
        await Promise.all(STATIC_FILES.map((file) => copyFile(path.join(src, file), path.join(dist, file))));
      }
    });
  },
};

const common = {
  bundle: true,
  target: ["es2022", "chrome111", "firefox111", "safari16"],
  minify: true,
  // gen/ts lives outside this package: its imports of @bufbuild/protobuf resolve to our node_modules.
  nodePaths: [path.join(here, "node_modules")],
  legalComments: "none",
  logLevel: "warning",
};

const options = {
  ...common,
  entryPoints: [path.join(src, "main.ts")],
  outfile: path.join(dist, "app.js"),
  format: "esm",
  sourcemap: "linked",
  plugins: [copyStatic],
};

const manifest = {
  id: "/",
  name: "AthenaOS",
  short_name: "AthenaOS",
  description: "Your agents: chat, what they remember, and what they tell you first.",
  start_url: "/",
  scope: "/",
  display: "standalone",
  background_color: BACKGROUND_COLOUR,
  theme_color: THEME_COLOUR,
  icons: ICONS.map(({ file, size, purpose }) => ({
    src: `/${file}`,
    sizes: `${size}x${size}`,
    type: "image/png",
    purpose,
  })),
};

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await esbuild.build(options);
await writeFile(path.join(dist, MANIFEST), JSON.stringify(manifest, null, 2) + "\n");
await Promise.all(ICONS.map(({ file, size, purpose }) => writeFile(path.join(dist, file), drawIcon(size, purpose))));

// The shell's version is the hash of its files: any change to them installs a new worker, whose cache
// replaces the old one. The worker is a classic script (every browser runs those as service workers).
const version = createHash("sha256");
for (const file of SHELL_FILES) {
  version.update(file).update("\0").update(await readFile(path.join(dist, file))).update("\0");
}
await esbuild.build({
  ...common,
  entryPoints: [path.join(src, "sw.ts")],
  outfile: path.join(dist, "sw.js"),
  format: "iife",
  define: {
    SHELL_VERSION: JSON.stringify(version.digest("hex").slice(0, 16)),
    SHELL_FILES: JSON.stringify(SHELL_FILES.map((file) => `/${file}`)),
  },
});

const declared = JSON.parse(await readFile(path.join(here, "build-files.json"), "utf8")).sort();
const built = [];
for (const entry of await readdir(dist, { recursive: true })) {
  if ((await stat(path.join(dist, entry))).isFile()) {
    built.push(entry.split(path.sep).join("/"));
  }
}
built.sort();
if (JSON.stringify(built) !== JSON.stringify(declared)) {
  throw new Error(
    `the build wrote ${JSON.stringify(built)}, build-files.json lists ${JSON.stringify(declared)}: ` +
      "update build-files.json, then `python -m k8s.render_envoy` (the edge's routes in Kubernetes)",
  );
}
