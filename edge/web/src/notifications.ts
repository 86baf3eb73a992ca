// Notifications: the bell in the top bar with the unread count, which WatchNotifications keeps current
// (reopened with backoff when it drops), and the panel: the notifications (agent, title, message, time,
// unread marked; one clicked is marked read and opens its conversation), "Mark all read", push on this
// device (Web Push through the service worker, sw.ts), and the settings: muted agents and quiet hours.
// Where the edge does not serve NotificationsService (UNIMPLEMENTED) the bell stays hidden.
import { Code, ConnectError } from "@connectrpc/connect";
import { timestampDate } from "@bufbuild/protobuf/wkt";
import type { Notification, NotificationSettings } from "../../../gen/ts/athena/notifications/v1/notifications_pb";
import type { AgentPicker } from "./agents";
import type { Api } from "./api";
import { byId, el, show } from "./dom";
import { describeError, SignedOutError } from "./errors";
import { activeRegistration } from "./pwa";

const PAGE_SIZE = 50;
/** Reopening a dropped watch waits 1, 2, 4… seconds, at most this long. */
const MAX_BACKOFF_MS = 30_000;
/** The server sends a heartbeat every 30 s: a stream silent for this long is dead and reopened. */
const SILENCE_MS = 75_000;

const when = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export class NotificationsPanel {
  private readonly bell = byId("open-notifications", HTMLButtonElement);
  private readonly count = byId("unread-count", HTMLSpanElement);
  private readonly dialog = byId("notifications-dialog", HTMLDialogElement);
  private readonly status = byId("notifications-status", HTMLParagraphElement);
  private readonly list = byId("notification-list", HTMLUListElement);
  private readonly empty = byId("no-notifications", HTMLParagraphElement);
  private readonly markAll = byId("mark-all-read", HTMLButtonElement);
  private readonly pushState = byId("push-state", HTMLParagraphElement);
  private readonly enablePush = byId("enable-push", HTMLButtonElement);
  private readonly disablePush = byId("disable-push", HTMLButtonElement);
  private readonly settingsForm = byId("notification-settings", HTMLFormElement);
  private readonly mutedAgents = byId("muted-agents", HTMLDivElement);
  private readonly quiet = byId("quiet-hours", HTMLInputElement);
  private readonly quietStart = byId("quiet-start", HTMLInputElement);
  private readonly quietEnd = byId("quiet-end", HTMLInputElement);
  private readonly timeZone = byId("quiet-time-zone", HTMLSelectElement);
  private readonly settingsStatus = byId("settings-status", HTMLParagraphElement);
  private notifications: Notification[] = [];
  private unread = 0;
  private watching: AbortController | null = null;
  /** Bumped by `reset`: answers of calls made for the person who was signed in are dropped. */
  private generation = 0;
  /** A clicked notification's link, for the app to open. */
  onOpenLink: (link: string) => void = () => {};

  constructor(
    private readonly api: Api,
    private readonly picker: AgentPicker,
  ) {
    this.bell.addEventListener("click", () => void this.open());
    byId("close-notifications", HTMLButtonElement).addEventListener("click", () => this.dialog.close());
    this.markAll.addEventListener("click", () => void this.markAllRead());
    this.enablePush.addEventListener("click", () => void this.subscribe());
    this.disablePush.addEventListener("click", () => void this.unsubscribe());
    this.quiet.addEventListener("change", () => this.showQuietHours());
    this.settingsForm.addEventListener("submit", (event) => {
      event.preventDefault();
      void this.saveSettings();
    });
  }

  /** Follows the signed-in person's notifications: the bell shows once the service answers. */
  start(): void {
    this.stop();
    const controller = new AbortController();
    this.watching = controller;
    void this.watch(controller.signal);
  }

  /** Nothing of the person who was signed in stays: the watch ends, the bell hides, the panel empties. */
  reset(): void {
    this.generation++;
    this.stop();
    this.dialog.close();
    show(this.bell, false);
    this.setUnread(0);
    this.notifications = [];
    this.list.replaceChildren();
    this.mutedAgents.replaceChildren();
    this.say("");
    this.sayAboutSettings("");
  }

  private stop(): void {
    this.watching?.abort();
    this.watching = null;
  }

  async open(): Promise<void> {
    if (!this.dialog.open) {
      this.dialog.showModal();
    }
    await Promise.all([this.refresh(), this.showPushState(), this.loadSettings()]);
  }

  /** WatchNotifications until `signal` aborts, reopened after a drop: 1, 2, 4… s later (reset by any
   * event), and when it falls silent past the heartbeats. */
  private async watch(signal: AbortSignal): Promise<void> {
    let backoff = 1_000;
    while (!signal.aborted) {
      const call = new AbortController();
      const abort = () => call.abort();
      signal.addEventListener("abort", abort);
      let silence = setTimeout(abort, SILENCE_MS);
      try {
        for await (const response of this.api.notifications.watchNotifications({}, { signal: call.signal })) {
          clearTimeout(silence);
          silence = setTimeout(abort, SILENCE_MS);
          backoff = 1_000;
          show(this.bell, true);
          const event = response.event;
          if (event.case === "unreadCount") {
            this.setUnread(event.value);
          } else if (event.case === "notification") {
            this.arrived(event.value);
          }
        }
      } catch (error) {
        if (error instanceof SignedOutError || unavailableHere(error)) {
          return; // signed out (the app shows sign-in), or no notifications on this deployment
        }
      } finally {
        clearTimeout(silence);
        signal.removeEventListener("abort", abort);
      }
      if (!signal.aborted) {
        await sleep(backoff, signal);
        backoff = Math.min(backoff * 2, MAX_BACKOFF_MS);
      }
    }
  }

  private arrived(notification: Notification): void {
    if (!notification.readAt) {
      this.setUnread(this.unread + 1);
    }
    if (this.notifications.some((known) => known.id === notification.id)) {
      return;
    }
    this.notifications.unshift(notification);
    if (this.dialog.open) {
      this.render();
    }
  }

  private async refresh(): Promise<void> {
    const generation = this.generation;
    this.say("Loading…");
    try {
      const response = await this.api.notifications.listNotifications({ pageSize: PAGE_SIZE });
      if (generation !== this.generation) {
        return;
      }
      this.notifications = response.notifications;
      this.setUnread(response.unreadCount);
      this.say("");
      this.render();
    } catch (error) {
      this.failed(error, (message) => this.say(message));
    }
  }

  private render(): void {
    this.list.replaceChildren(...this.notifications.map((notification) => this.item(notification)));
    show(this.empty, this.notifications.length === 0);
    this.markAll.disabled = this.unread === 0;
  }

  private item(notification: Notification): HTMLElement {
    const unread = !notification.readAt;
    const agent = this.picker.name(notification.agentId);
    const time = notification.createdAt ? timestampDate(notification.createdAt) : null;
    const open = el(
      "button",
      { type: "button", class: "notification-open" },
      el("span", { class: "notification-agent" }, el("span", { class: "swatch", "aria-hidden": "true" }), agent),
      unread && el("span", { class: "unread-mark" }, "Unread"),
      el("strong", { class: "notification-title" }, notification.title),
      el("span", { class: "notification-body" }, notification.body),
      time && el("time", { class: "meta", datetime: time.toISOString() }, when.format(time)),
    );
    open.addEventListener("click", () => void this.choose(notification));
    const item = el(
      "li",
      { class: "notification", "data-id": notification.id, "data-unread": String(unread) },
      open,
    );
    item.style.setProperty("--option-accent", this.picker.accent(notification.agentId));
    return item;
  }

  /** Marks `notification` read and opens its link (its conversation). */
  private async choose(notification: Notification): Promise<void> {
    if (!notification.readAt) {
      try {
        const response = await this.api.notifications.markRead({ notificationIds: [notification.id] });
        this.setUnread(response.unreadCount);
      } catch (error) {
        this.failed(error, (message) => this.say(message));
        return;
      }
    }
    this.dialog.close();
    this.onOpenLink(notification.link || "/");
  }

  private async markAllRead(): Promise<void> {
    this.markAll.disabled = true;
    try {
      const response = await this.api.notifications.markRead({ all: true });
      this.setUnread(response.unreadCount);
      await this.refresh();
    } catch (error) {
      this.markAll.disabled = false;
      this.failed(error, (message) => this.say(message));
    }
  }

  private setUnread(count: number): void {
    this.unread = Math.max(0, count);
    this.count.textContent = this.unread > 99 ? "99+" : String(this.unread);
    show(this.count, this.unread > 0);
    this.bell.setAttribute("aria-label", this.unread > 0 ? `Notifications, ${this.unread} unread` : "Notifications");
    this.markAll.disabled = this.unread === 0;
  }

  // Push on this device.

  private async showPushState(): Promise<void> {
    const registration = await pushRegistration();
    const subscription = registration ? await registration.pushManager.getSubscription() : null;
    show(this.enablePush, registration !== null && subscription === null);
    show(this.disablePush, subscription !== null);
    if (!registration) {
      this.sayAboutPush("This browser cannot show AthenaOS notifications when the app is closed.");
    } else if (subscription) {
      this.sayAboutPush("Push is on: this device shows your notifications even when AthenaOS is closed.");
    } else if (Notification.permission === "denied") {
      this.sayAboutPush("Notifications are blocked for AthenaOS in this browser's site settings.");
      this.enablePush.disabled = true;
    } else {
      this.sayAboutPush("Push is off on this device.");
      this.enablePush.disabled = false;
    }
  }

  private async subscribe(): Promise<void> {
    const registration = await pushRegistration();
    if (!registration) {
      return;
    }
    this.enablePush.disabled = true;
    try {
      if ((await Notification.requestPermission()) !== "granted") {
        await this.showPushState();
        if (Notification.permission !== "denied") {
          this.sayAboutPush("Push stays off: the browser was not allowed to show notifications.");
        }
        return;
      }
      const config = await this.api.notifications.getPushConfig({});
      const options = { userVisibleOnly: true, applicationServerKey: fromBase64Url(config.vapidPublicKey) };
      let subscription: PushSubscription;
      try {
        subscription = await registration.pushManager.subscribe(options);
      } catch (error) {
        // Subscribed before with another server key (the deployment's changed): subscribe afresh.
        const existing = await registration.pushManager.getSubscription();
        if (!(error instanceof DOMException && error.name === "InvalidStateError") || !existing) {
          throw error;
        }
        await existing.unsubscribe();
        subscription = await registration.pushManager.subscribe(options);
      }
      const keys = subscription.toJSON().keys ?? {};
      await this.api.notifications.addPushSubscription({
        endpoint: subscription.endpoint,
        p256dh: keys["p256dh"] ?? "",
        auth: keys["auth"] ?? "",
      });
      await this.showPushState();
    } catch (error) {
      this.enablePush.disabled = false;
      this.failed(error, (message) => this.sayAboutPush(`Push could not be turned on: ${message}`));
    }
  }

  private async unsubscribe(): Promise<void> {
    const registration = await pushRegistration();
    const subscription = registration ? await registration.pushManager.getSubscription() : null;
    if (!subscription) {
      await this.showPushState();
      return;
    }
    this.disablePush.disabled = true;
    try {
      // This device stops receiving first; then the server forgets the endpoint.
      await subscription.unsubscribe();
      await this.api.notifications.removePushSubscription({ endpoint: subscription.endpoint });
      await this.showPushState();
    } catch (error) {
      this.failed(error, (message) => this.sayAboutPush(message));
    } finally {
      this.disablePush.disabled = false;
    }
  }

  private sayAboutPush(message: string): void {
    this.pushState.textContent = message;
  }

  // Settings.

  private async loadSettings(): Promise<void> {
    const generation = this.generation;
    try {
      const response = await this.api.notifications.getNotificationSettings({});
      if (generation === this.generation) {
        this.renderSettings(response.settings);
      }
    } catch (error) {
      this.failed(error, (message) => this.sayAboutSettings(message));
    }
  }

  private renderSettings(settings: NotificationSettings | undefined): void {
    const muted = new Set(settings?.mutedAgentIds ?? []);
    const agents = this.picker.all;
    // Muted agents the catalog no longer lists stay muted (and listed), so saving keeps them.
    const ids = [...agents.map((agent) => agent.id), ...[...muted].filter((id) => !agents.some((a) => a.id === id))];
    this.mutedAgents.replaceChildren(
      ...ids.map((id) => {
        const inputId = `mute-${id}`;
        const box = el("input", { type: "checkbox", id: inputId, value: id, checked: muted.has(id) });
        return el("label", { for: inputId }, box, ` ${this.picker.name(id)}`);
      }),
    );
    const quiet = settings?.quietHours;
    this.quiet.checked = quiet !== undefined;
    this.quietStart.value = quiet?.start || "22:00";
    this.quietEnd.value = quiet?.end || "07:00";
    this.fillTimeZones(quiet?.timeZone || browserTimeZone());
    this.showQuietHours();
  }

  private showQuietHours(): void {
    for (const input of [this.quietStart, this.quietEnd, this.timeZone]) {
      input.disabled = !this.quiet.checked;
    }
  }

  private fillTimeZones(selected: string): void {
    const zones = new Set(supportedTimeZones());
    zones.add(selected);
    this.timeZone.replaceChildren(
      ...[...zones].sort().map((zone) => el("option", { value: zone, selected: zone === selected }, zone)),
    );
    this.timeZone.value = selected;
  }

  private async saveSettings(): Promise<void> {
    const muted = [...this.mutedAgents.querySelectorAll<HTMLInputElement>("input:checked")].map((box) => box.value);
    const quietHours = this.quiet.checked
      ? { start: this.quietStart.value, end: this.quietEnd.value, timeZone: this.timeZone.value }
      : undefined;
    this.sayAboutSettings("Saving…");
    try {
      const response = await this.api.notifications.updateNotificationSettings({
        settings: { mutedAgentIds: muted, quietHours },
      });
      this.renderSettings(response.settings);
      this.sayAboutSettings("Saved.");
    } catch (error) {
      this.failed(error, (message) => this.sayAboutSettings(message));
    }
  }

  private sayAboutSettings(message: string): void {
    this.settingsStatus.textContent = message;
  }

  private say(message: string): void {
    this.status.textContent = message;
  }

  private failed(error: unknown, say: (message: string) => void): void {
    if (!(error instanceof SignedOutError)) {
      say(describeError(error));
    }
  }
}

/** The service worker's registration where this browser has Web Push, else null. */
async function pushRegistration(): Promise<ServiceWorkerRegistration | null> {
  if (!("PushManager" in window) || !("Notification" in window)) {
    return null;
  }
  const registration = await activeRegistration();
  return registration && "pushManager" in registration ? registration : null;
}

/** Whether this deployment has no notifications: the edge routes no NotificationsService. */
function unavailableHere(error: unknown): boolean {
  return error instanceof ConnectError && error.code === Code.Unimplemented;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    signal.addEventListener("abort", done, { once: true });
    function done(): void {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
  });
}

function fromBase64Url(text: string): Uint8Array<ArrayBuffer> {
  const base64 = text.replace(/-/g, "+").replace(/_/g, "/").padEnd(Math.ceil(text.length / 4) * 4, "=");
  const binary = atob(base64);
  const bytes = new Uint8Array(new ArrayBuffer(binary.length));
  for (let i = 0; i < binary.length; i++) {
    bytes[i] = binary.charCodeAt(i);
  }
  return bytes;
}

function browserTimeZone(): string {
  return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
}

function supportedTimeZones(): string[] {
  const intl = Intl as unknown as { supportedValuesOf?: (key: string) => string[] };
  return intl.supportedValuesOf?.("timeZone") ?? ["UTC"];
}
