// The installable app: registers the service worker (sw.ts, built into /sw.js), and passes on what it asks
// of an open tab (open a notification's link). Registering is a Trusted Types sink under the page's
// Content-Security-Policy: the one policy it allows (edge/envoy_config.py) makes "/sw.js" and nothing else.

const SERVICE_WORKER = "/sw.js";
const POLICY_NAME = "athena-service-worker";

/** The few members of the Trusted Types API used here (the TypeScript DOM library has none). */
interface TrustedTypesFactory {
  createPolicy(
    name: string,
    rules: { createScriptURL(input: string): string },
  ): { createScriptURL(input: string): unknown };
}

/** Registers the service worker (scope "/"); `onOpenLink` gets each link a clicked notification opens in
 * this tab. Resolves with the registration, or null where there are no service workers (an insecure
 * origin, a private window of some browsers): the app works without one. */
export async function registerServiceWorker(
  onOpenLink: (link: string) => void,
): Promise<ServiceWorkerRegistration | null> {
  if (!("serviceWorker" in navigator)) {
    return null;
  }
  navigator.serviceWorker.addEventListener("message", (event: MessageEvent<unknown>) => {
    const data = event.data;
    if (typeof data === "object" && data !== null && "type" in data && data.type === "open-link") {
      const link = "link" in data && typeof data.link === "string" ? data.link : "/";
      onOpenLink(link);
    }
  });
  navigator.serviceWorker.startMessages();
  try {
    return await navigator.serviceWorker.register(scriptUrl(), { scope: "/" });
  } catch {
    return null; // storage or workers disabled: no offline shell, no push, the rest works
  }
}

/** The service worker's registration once it is active, or null without service workers. */
export async function activeRegistration(): Promise<ServiceWorkerRegistration | null> {
  return "serviceWorker" in navigator ? navigator.serviceWorker.ready : null;
}

function scriptUrl(): string {
  const factory = (window as unknown as { trustedTypes?: TrustedTypesFactory }).trustedTypes;
  if (!factory) {
    return SERVICE_WORKER;
  }
  const policy = factory.createPolicy(POLICY_NAME, {
    createScriptURL: (input) => {
      if (input !== SERVICE_WORKER) {
        throw new TypeError(`${input} is not the app's service worker`);
      }
      return input;
    },
  });
  // A TrustedScriptURL: register() takes one where its type says string.
  return policy.createScriptURL(SERVICE_WORKER) as string;
}
