// The app's pages in the address bar. The edge serves the app at each of them (edge/envoy_config.py,
// APP_PAGES): `/` is the chat; `/connections` opens the Connections panel over it, and is where the
// providers send a person back after connecting an account. The conversation stays in the fragment
// (history.ts), whichever page shows.

export const CONNECTIONS_PATH = "/connections";

/** The redirect URI given to BeginConnection and CompleteConnection: registered with each provider. */
export function connectionsRedirectUri(): string {
  return `${location.origin}${CONNECTIONS_PATH}`;
}

export function onConnectionsPage(): boolean {
  return location.pathname === CONNECTIONS_PATH;
}

/** Shows `path` in the address, without its query, keeping the fragment; no history entry is added. */
export function setPage(path: "/" | typeof CONNECTIONS_PATH): void {
  history.replaceState(null, "", path + location.hash);
}

/** What a notification's link asks the app to show: "/?agent=<id>&conversation=<id>" (notifications.proto,
 * Notification.link), either part optional. */
export interface LinkTarget {
  readonly agentId: string;
  readonly conversationId: string;
}

const ID = /^[\w-]{1,64}$/;

/** The target of `link` (a path of this app), or null when it names no agent and no conversation. */
export function linkTarget(link: string): LinkTarget | null {
  let url: URL;
  try {
    url = new URL(link, location.origin);
  } catch {
    return null;
  }
  if (url.origin !== location.origin || url.pathname !== "/") {
    return null;
  }
  const agentId = url.searchParams.get("agent") ?? "";
  const conversationId = url.searchParams.get("conversation") ?? "";
  const target = {
    agentId: ID.test(agentId) ? agentId : "",
    conversationId: ID.test(conversationId) ? conversationId : "",
  };
  return target.agentId || target.conversationId ? target : null;
}

/** The target in the page's own address (a notification opened in a new window), removed from it: the
 * conversation then lives in the fragment like any other (history.ts). */
export function takeLinkTargetFromAddress(): LinkTarget | null {
  const target = linkTarget(location.pathname + location.search);
  if (target) {
    history.replaceState(null, "", target.conversationId ? `/#c=${target.conversationId}` : "/");
  }
  return target;
}
