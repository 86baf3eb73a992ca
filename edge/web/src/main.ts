// AthenaOS in the browser: wires the session, the gRPC-web clients and the views, and switches between
// sign-in and the app.
import { Code, ConnectError } from "@connectrpc/connect";
import { AccountPanel } from "./account";
import { CONNECTIONS_PATH, linkTarget, takeLinkTargetFromAddress, type LinkTarget } from "./address";
import { AgentPicker } from "./agents";
import { createApi } from "./api";
import { ChatView } from "./chat";
import { ConnectionsPanel } from "./connections";
import { byId, show } from "./dom";
import { describeError, SignedOutError } from "./errors";
import { conversationInAddress, HistoryView, setConversationInAddress } from "./history";
import { NotificationsPanel } from "./notifications";
import { registerServiceWorker } from "./pwa";
import { ReceiptDialog } from "./receipt";
import { SessionStore, type TabSession } from "./session";
import { SignInView } from "./signin";
import type { TurnTrace } from "./tracing";

const OFFLINE_KEY = "athena.offline-model";
/** How long a sign-out waits for Logout before leaving it to the next start of the app. */
const LOGOUT_TIMEOUT_MS = 5_000;
/** Refreshes are single-flight: one that hangs (a stalled connection) must not hold every call forever. */
const REFRESH_TIMEOUT_MS = 10_000;

class App {
  private readonly sessions = new SessionStore(localStorage);
  private readonly api = createApi(location.origin, this.sessions);
  private readonly appView = byId("app-view", HTMLDivElement);
  private readonly nav = byId("account-nav", HTMLElement);
  private readonly userName = byId("user-name", HTMLSpanElement);
  private readonly badge = byId("offline-badge", HTMLSpanElement);
  private readonly errorBanner = byId("error", HTMLDivElement);
  private readonly errorText = byId("error-text", HTMLSpanElement);
  private readonly historyPanel = byId("history", HTMLElement);
  private readonly historyToggle = byId("toggle-history", HTMLButtonElement);
  private readonly menuToggle = byId("toggle-menu", HTMLButtonElement);
  private readonly signIn = new SignInView(this.api);
  private readonly picker = new AgentPicker(byId("agent-options", HTMLDivElement), this.appView);
  private readonly history = new HistoryView(
    this.api,
    byId("conversation-list", HTMLUListElement),
    byId("no-conversations", HTMLParagraphElement),
  );
  private readonly account = new AccountPanel(this.api, this.picker);
  private readonly connections = new ConnectionsPanel(this.api);
  private readonly notifications = new NotificationsPanel(this.api, this.picker);
  /** An agent a notification's link named, to select once the agents are listed. */
  private pendingAgent = "";
  private readonly receipt = new ReceiptDialog();
  private readonly chat = new ChatView(
    this.api,
    this.picker,
    byId("messages", HTMLElement),
    byId("conversation-title", HTMLHeadingElement),
    byId("composer", HTMLFormElement),
    byId("message", HTMLTextAreaElement),
    {
      conversationStarted: (conversationId, offlineModel) => {
        setConversationInAddress(conversationId);
        this.history.markCurrent(conversationId);
        this.setOffline(offlineModel);
        this.clearError();
      },
      turnFinished: (trace) => void this.refreshHistory(trace),
      error: (error) => this.showError(error),
    },
  );

  constructor() {
    // The refresh token never reaches this code: it is the HttpOnly cookie these calls carry.
    this.sessions.start({
      refresh: async () => {
        const response = await this.api.auth.refreshSession(
          { refreshTokenInCookie: true },
          { timeoutMs: REFRESH_TIMEOUT_MS },
        );
        if (!response.session) {
          throw new ConnectError("no session in the answer", Code.Unauthenticated);
        }
        return response.session;
      },
      logout: async () => {
        await this.api.auth.logout({ refreshTokenInCookie: true }, { timeoutMs: LOGOUT_TIMEOUT_MS });
      },
    });
    this.sessions.onSignedOut = (notice) => this.leave(notice);
    this.sessions.onSignedIn = (session) => {
      this.resetView();
      void this.enter(session);
    };
    this.signIn.onSignedIn = (session) => void this.enter(this.sessions.save(session));
    this.history.onSelect = (conversationId) => {
      this.toggleHistory(false);
      void this.open(conversationId);
    };
    this.account.onError = (error) => this.showError(error);
    this.notifications.onOpenLink = (link) => this.openLink(link);
    this.account.onDeleted = (deleted) => {
      const notice = "Your account was deleted.";
      // Over the sign-in page (signing out closes every dialog): what was erased, and its receipt.
      void this.signOut(notice, notice).then(() => this.receipt.show(deleted));
    };
    byId("new-conversation", HTMLButtonElement).addEventListener("click", () => {
      this.toggleHistory(false);
      this.startNew();
    });
    byId("sign-out", HTMLButtonElement).addEventListener(
      "click",
      () => void this.signOut("You signed out.", "You signed out in another tab."),
    );
    byId("dismiss-error", HTMLButtonElement).addEventListener("click", () => this.clearError());
    // Links to the Connections panel (a tool's "connect Google again") open it here, not as a new page.
    document.addEventListener("click", (event) => {
      const link = event.target instanceof Element ? event.target.closest("a[href]") : null;
      const plain = !(event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) && event.button === 0;
      if (link?.getAttribute("href") === CONNECTIONS_PATH && plain && this.sessions.session) {
        event.preventDefault();
        void this.connections.open();
      }
    });
    this.historyToggle.addEventListener("click", () =>
      this.toggleHistory(this.historyToggle.getAttribute("aria-expanded") !== "true"),
    );
    this.menuToggle.addEventListener("click", () =>
      this.toggleMenu(this.menuToggle.getAttribute("aria-expanded") !== "true"),
    );
    this.nav.addEventListener("click", (event) => {
      if (event.target instanceof HTMLButtonElement) {
        this.toggleMenu(false);
      }
    });
    window.addEventListener("hashchange", () => {
      const wanted = conversationInAddress();
      if (this.sessions.session && wanted !== this.chat.currentConversation) {
        if (wanted) {
          void this.open(wanted);
        } else {
          this.startNew();
        }
      }
    });
    this.badge.hidden = localStorage.getItem(OFFLINE_KEY) !== "true";
  }

  async boot(): Promise<void> {
    // A notification opened in a new window: its conversation goes to the fragment, its agent waits for
    // the agents.
    this.pendingAgent = takeLinkTargetFromAddress()?.agentId ?? "";
    void registerServiceWorker((link) => this.openLink(link));
    if (await this.signIn.completeRedirect()) {
      return;
    }
    let session: TabSession | null;
    try {
      session = await this.sessions.resume();
    } catch (error) {
      await this.signIn.show(describeError(error));
      return;
    }
    if (session) {
      await this.enter(session);
    } else {
      await this.signIn.show();
    }
  }

  private async enter(session: TabSession): Promise<void> {
    this.signIn.hide();
    this.clearError();
    this.userName.textContent = session.displayName;
    show(this.nav, true);
    show(this.menuToggle, true);
    show(this.appView, true);
    this.chat.startNew();
    this.picker.showLoading();
    // The box takes text at once; what is sent before the agents (and the conversation in the address)
    // are loaded goes out when they are.
    byId("message", HTMLTextAreaElement).focus();
    const agents = this.api.chat.listAgents({}).then((answer) => {
      this.picker.render(answer.agents);
      this.selectPendingAgent();
    });
    this.notifications.start();
    const opened = agents.then(() => {
      const wanted = conversationInAddress();
      return wanted ? this.open(wanted) : undefined;
    });
    this.chat.waitFor(opened);
    // Back from a provider's consent page (or a reload of `/connections`): the panel, over the chat.
    this.connections.openFromAddress().catch((error: unknown) => this.showError(error));
    try {
      await agents;
      await Promise.all([this.refreshHistory(), opened]);
    } catch (error) {
      this.picker.showUnavailable();
      this.showError(error);
    }
  }

  private leave(notice: string): void {
    this.resetView();
    // This device stops receiving the pushes of the person who signed out (the server drops the
    // subscription once the push service says it is gone).
    void navigator.serviceWorker?.ready
      .then((registration) => registration.pushManager?.getSubscription())
      .then((subscription) => subscription?.unsubscribe())
      .catch(() => undefined);
    void this.signIn.show(notice);
  }

  /** Back to an empty, hidden app: nothing of the person who was signed in stays on the page. */
  private resetView(): void {
    show(this.appView, false);
    show(this.nav, false);
    show(this.menuToggle, false);
    this.toggleMenu(false);
    this.history.clear();
    this.connections.reset();
    this.notifications.reset();
    this.chat.startNew();
    setConversationInAddress("");
    for (const dialog of document.querySelectorAll("dialog")) {
      dialog.close();
    }
    this.clearError();
  }

  /** Signs every tab out, showing `notice` here and `noticeElsewhere` in the others (after the account's
   * deletion too: its sessions are gone, and Logout clears the cookie). */
  private async signOut(notice: string, noticeElsewhere: string): Promise<void> {
    // Waits for Logout (or its timeout), so that a sign-in right after cannot have its new cookie
    // cleared by the old session's Logout answer.
    await this.sessions.signOut(noticeElsewhere);
    this.leave(notice);
  }

  private startNew(): void {
    this.chat.startNew();
    setConversationInAddress("");
    this.history.markCurrent("");
  }

  /** Shows what a notification's link names ("/?agent=<id>&conversation=<id>") in this tab. */
  private openLink(link: string): void {
    const target = linkTarget(link);
    if (!target) {
      return;
    }
    if (!this.sessions.session) {
      // After sign-in: the conversation in the address, the agent once listed.
      this.takeTarget(target);
      return;
    }
    this.toggleHistory(false);
    for (const dialog of document.querySelectorAll("dialog")) {
      dialog.close();
    }
    this.takeTarget(target);
    if (target.conversationId) {
      void this.open(target.conversationId);
    } else {
      this.startNew();
      this.selectPendingAgent();
    }
  }

  private takeTarget(target: LinkTarget): void {
    this.pendingAgent = target.agentId;
    if (target.conversationId) {
      setConversationInAddress(target.conversationId);
    }
  }

  /** Selects the agent a link named, when the agents are listed; a conversation shown later selects its
   * own. */
  private selectPendingAgent(): void {
    if (this.pendingAgent && this.picker.all.length > 0) {
      this.picker.select(this.pendingAgent);
      this.pendingAgent = "";
    }
  }

  private async open(conversationId: string): Promise<void> {
    try {
      const response = await this.api.chat.getConversation({ conversationId });
      if (response.conversation) {
        this.chat.show(response.conversation);
        setConversationInAddress(conversationId);
        this.history.markCurrent(conversationId);
      }
    } catch (error) {
      const gone =
        error instanceof ConnectError && [Code.NotFound, Code.InvalidArgument].includes(error.code);
      if (gone) {
        this.startNew();
        this.showMessage("That conversation no longer exists.");
      } else {
        this.showError(error);
      }
    }
  }

  private async refreshHistory(trace?: TurnTrace): Promise<void> {
    try {
      await this.history.refresh(trace);
    } catch (error) {
      this.showError(error);
    }
  }

  private setOffline(offline: boolean): void {
    this.badge.hidden = !offline;
    localStorage.setItem(OFFLINE_KEY, String(offline));
  }

  private toggleHistory(open: boolean): void {
    this.historyToggle.setAttribute("aria-expanded", String(open));
    this.historyPanel.classList.toggle("open", open);
  }

  private toggleMenu(open: boolean): void {
    this.menuToggle.setAttribute("aria-expanded", String(open));
    this.nav.classList.toggle("open", open);
  }

  private showError(error: unknown): void {
    if (error instanceof SignedOutError) {
      return; // leave() already shows sign-in with the notice.
    }
    this.showMessage(describeError(error));
  }

  private showMessage(message: string): void {
    this.errorText.textContent = message;
    show(this.errorBanner, true);
  }

  private clearError(): void {
    show(this.errorBanner, false);
    this.errorText.textContent = "";
  }
}

void new App().boot();
