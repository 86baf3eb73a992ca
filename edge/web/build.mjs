// Builds the browser client into dist/: app.js (bundled, minified) with its source map, index.html and
// app.css. Envoy serves every file of dist/ when its configuration is rendered, so build before starting
// the mesh (`make run` does). The Kubernetes configuration is rendered without a build, from the list of
// files in build-files.json (the edge image holds the build), so the build fails when it writes others.
import { copyFile, mkdir, readdir, readFile, rm, stat } from "node:fs/promises";
import path from "node:path";
import { fileURLToPath } from "node:url";
import * as esbuild from "esbuild";

const here = path.dirname(fileURLToPath(import.meta.url));
const src = path.join(here, "src");
const dist = path.join(here, "dist");
const STATIC_FILES = ["index.html", "app.css"];

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

const options = {
  entryPoints: [path.join(src, "main.ts")],
  outfile: path.join(dist, "app.js"),
  bundle: true,
  format: "esm",
  target: ["es2022", "chrome111", "firefox111", "safari16"],
  minify: true,
  sourcemap: "linked",
  // gen/ts lives outside this package: its imports of @bufbuild/protobuf resolve to our node_modules.
  nodePaths: [path.join(here, "node_modules")],
  legalComments: "none",
  logLevel: "warning",
  plugins: [copyStatic],
};

await rm(dist, { recursive: true, force: true });
await mkdir(dist, { recursive: true });
await esbuild.build(options);

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
