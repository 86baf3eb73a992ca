// The service worker (dist/sw.js, scope "/"): keeps the app shell so the app starts offline, and shows
// the notifications pushed to this device (Web Push), opening their conversation when clicked.
//
// The shell is precached at install under the build's content hash (build.mjs defines SHELL_VERSION and
// SHELL_FILES): a new build is a new worker with a new cache, and activating it deletes the old caches.
// Shell files and page loads go to the network first, so an online app is always the newest build, and
// fall back to the cache when it cannot be reached. Nothing else is touched: gRPC-web calls (POST) and any
// other address go to the network as if there were no worker, and are never cached.
//
// Typed against the webworker library (tsconfig.sw.json); the app's own code (DOM) never imports this.
export {};

declare const SHELL_VERSION: string;
declare const SHELL_FILES: readonly string[];

const worker = self as unknown as ServiceWorkerGlobalScope;
const CACHE_PREFIX = "athena-shell-";
const CACHE = `${CACHE_PREFIX}${SHELL_VERSION}`;
/** Every page of the app is index.html (the edge's APP_PAGES): a page load offline gets this one. */
const PAGE = "/index.html";
/** A page load that has no answer for this long is answered from the cache (a connection that hangs). */
const NAVIGATION_TIMEOUT_MS = 5_000;
const ICON = "/icon-192.png";

/** A message to the app's tabs: open `link` (a path of the app) in place. app's main.ts handles it. */
interface OpenLinkMessage {
  readonly type: "open-link";
  readonly link: string;
}

/** What the push service delivers: NotificationsService's push payload (JSON). */
interface PushPayload {
  readonly title?: unknown;
  readonly body?: unknown;
  readonly link?: unknown;
  readonly id?: unknown;
  readonly agent_id?: unknown;
}

worker.addEventListener("install", (event) => {
  event.waitUntil(
    (async () => {
      const cache = await caches.open(CACHE);
      // `reload`: past the HTTP cache, so the shell stored is the one this worker was built with.
      await cache.addAll(SHELL_FILES.map((file) => new Request(file, { cache: "reload" })));
      await worker.skipWaiting();
    })(),
  );
});

worker.addEventListener("activate", (event) => {
  event.waitUntil(
    (async () => {
      const names = await caches.keys();
      await Promise.all(
        names.filter((name) => name.startsWith(CACHE_PREFIX) && name !== CACHE).map((name) => caches.delete(name)),
      );
      await worker.clients.claim();
    })(),
  );
});

worker.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") {
    return; // gRPC-web and every other call: straight to the network.
  }
  const url = new URL(request.url);
  if (url.origin !== worker.location.origin) {
    return;
  }
  if (request.mode === "navigate") {
    event.respondWith(networkFirst(request, PAGE, NAVIGATION_TIMEOUT_MS));
  } else if (SHELL_FILES.includes(url.pathname)) {
    event.respondWith(networkFirst(request, url.pathname));
  }
});

/** The network's answer to `request`; the cached `fallback` when the network fails (or takes longer than
 * `timeoutMs`), and the network's error when nothing is cached either. */
async function networkFirst(request: Request, fallback: string, timeoutMs?: number): Promise<Response> {
  const network = fetch(request);
  try {
    return await (timeoutMs === undefined ? network : withTimeout(network, timeoutMs));
  } catch (error) {
    const cached = await caches.match(fallback, { cacheName: CACHE });
    if (cached) {
      network.catch(() => undefined); // a late failure of the abandoned fetch is expected
      return cached;
    }
    throw error;
  }
}

function withTimeout<T>(promise: Promise<T>, timeoutMs: number): Promise<T> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error("the network took too long")), timeoutMs);
    promise.then(resolve, reject).finally(() => clearTimeout(timer));
  });
}

worker.addEventListener("push", (event) => {
  const payload = readPayload(event.data);
  const title = text(payload.title) || "AthenaOS";
  const id = text(payload.id);
  const options: NotificationOptions = {
    body: text(payload.body),
    icon: ICON,
    data: { link: appLink(payload.link), id, agentId: text(payload.agent_id) },
  };
  if (id) {
    options.tag = id; // the same notification pushed twice replaces itself
  }
  // Chromium requires every push to show a notification (`userVisibleOnly`), even an unreadable one.
  event.waitUntil(worker.registration.showNotification(title, options));
});

worker.addEventListener("notificationclick", (event) => {
  event.notification.close();
  const data: unknown = event.notification.data;
  const link = appLink(typeof data === "object" && data !== null && "link" in data ? data.link : "");
  event.waitUntil(openLink(link));
});

/** Shows `link` in a tab of the app: an open one (focused, told to open it in place, so nothing typed
 * there is lost), else a new window. */
async function openLink(link: string): Promise<void> {
  const windows = await worker.clients.matchAll({ type: "window", includeUncontrolled: true });
  const tab = windows.find((client) => new URL(client.url).origin === worker.location.origin);
  if (tab) {
    const focused = await tab.focus().catch(() => tab);
    const message: OpenLinkMessage = { type: "open-link", link };
    focused.postMessage(message);
    return;
  }
  await worker.clients.openWindow(link);
}

function readPayload(data: PushMessageData | null): PushPayload {
  if (!data) {
    return {};
  }
  try {
    const parsed: unknown = data.json();
    return typeof parsed === "object" && parsed !== null ? (parsed as PushPayload) : {};
  } catch {
    return { body: data.text() };
  }
}

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}

/** `link` when it is a path of this app ("/?agent=focus&conversation=…"), else "/": a push can send no
 * one to another site. */
function appLink(link: unknown): string {
  const value = text(link);
  if (!value.startsWith("/") || value.startsWith("//")) {
    return "/";
  }
  const url = new URL(value, worker.location.origin);
  return url.origin === worker.location.origin ? url.pathname + url.search + url.hash : "/";
}
