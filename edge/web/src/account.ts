// What a person controls about their data: the memories their agents keep (where each came from, with
// correct, history and delete), a download of everything (GDPR Art. 15/20) and the deletion of the account
// (Art. 17), after typed confirmation.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  MemoryScope,
  MemorySource,
  type DeleteAccountResponse,
  type Memory,
} from "../../../gen/ts/athena/account/v1/account_pb";
import type { AgentPicker } from "./agents";
import type { Api } from "./api";
import { byId, el } from "./dom";
import { describeError } from "./errors";

export const EXPORT_FILE_NAME = "athena-export.json";
const CONFIRMATION_WORD = "delete";

export class AccountPanel {
  private readonly memoriesDialog = byId("memories-dialog", HTMLDialogElement);
  private readonly memoryList = byId("memory-list", HTMLUListElement);
  private readonly memoriesStatus = byId("memories-status", HTMLParagraphElement);
  private readonly learnFacts = byId("learn-facts", HTMLInputElement);
  private readonly deleteDialog = byId("delete-dialog", HTMLDialogElement);
  private readonly confirmation = byId("delete-confirmation", HTMLInputElement);
  private readonly confirmButton = byId("confirm-delete", HTMLButtonElement);
  private readonly exportButton = byId("export-data", HTMLButtonElement);

  /** The account is gone: the app signs out and shows the erasure receipt `deleted` carries. */
  onDeleted: (deleted: DeleteAccountResponse) => void = () => {};
  onError: (error: unknown) => void = () => {};

  constructor(
    private readonly api: Api,
    private readonly picker: AgentPicker,
  ) {
    byId("open-memories", HTMLButtonElement).addEventListener("click", () => void this.openMemories());
    byId("close-memories", HTMLButtonElement).addEventListener("click", () => this.memoriesDialog.close());
    this.learnFacts.addEventListener("change", () => void this.setLearning(this.learnFacts.checked));
    this.exportButton.addEventListener("click", () => void this.exportData());
    byId("open-delete-account", HTMLButtonElement).addEventListener("click", () => this.openDelete());
    byId("cancel-delete", HTMLButtonElement).addEventListener("click", () => this.deleteDialog.close());
    this.confirmation.addEventListener("input", () => {
      this.confirmButton.disabled = this.confirmation.value.trim().toLowerCase() !== CONFIRMATION_WORD;
    });
    byId("delete-form", HTMLFormElement).addEventListener("submit", (event) => {
      event.preventDefault();
      void this.deleteAccount();
    });
  }

  async openMemories(): Promise<void> {
    this.memoryList.replaceChildren();
    this.memoriesStatus.textContent = "Loading…";
    this.memoriesDialog.showModal();
    this.learnFacts.disabled = true;
    try {
      const [response, settings] = await Promise.all([
        this.api.account.listMemories({ pageSize: 100 }),
        this.api.account.getMemorySettings({}),
      ]);
      this.learnFacts.checked = settings.settings?.learnFromConversations ?? true;
      this.learnFacts.disabled = false;
      this.renderMemories(response.memories);
    } catch (error) {
      this.memoriesStatus.textContent = describeError(error);
      this.onError(error);
    }
  }

  /** Turns learning from conversations on or off (what was learnt stays until deleted). */
  private async setLearning(learn: boolean): Promise<void> {
    this.learnFacts.disabled = true;
    try {
      const response = await this.api.account.setMemorySettings({
        settings: { learnFromConversations: learn },
      });
      this.learnFacts.checked = response.settings?.learnFromConversations ?? learn;
      this.memoriesStatus.textContent = this.learnFacts.checked
        ? "Your agents learn from what you mention in passing."
        : "Your agents no longer learn from what you mention in passing.";
    } catch (error) {
      this.learnFacts.checked = !learn;
      this.memoriesStatus.textContent = describeError(error);
      this.onError(error);
    } finally {
      this.learnFacts.disabled = false;
    }
  }

  private renderMemories(memories: readonly Memory[]): void {
    this.memoriesStatus.textContent =
      memories.length === 0 ? "Your agents don't remember anything about you yet." : "";
    this.memoryList.replaceChildren(...memories.map((memory) => this.memoryItem(memory)));
  }

  private memoryItem(memory: Memory): HTMLElement {
    const scope =
      memory.scope === MemoryScope.AGENT
        ? `Only ${this.picker.name(memory.agentId)}`
        : "All agents";
    const forget = el(
      "button",
      { type: "button", class: "forget", "aria-label": `Forget “${memory.text}”` },
      "Forget",
    );
    const correct = el(
      "button",
      { type: "button", class: "correct", "aria-label": `Correct “${memory.text}”` },
      "Correct",
    );
    const showHistory = el(
      "button",
      { type: "button", class: "show-history", "aria-label": `History of “${memory.text}”` },
      "History",
    );
    const when = memory.createdAt ? timestampDate(memory.createdAt).toLocaleDateString() : "";
    const item = el(
      "li",
      {
        class: "memory",
        "data-id": memory.id,
        "data-source": memory.source === MemorySource.INFERRED ? "inferred" : "explicit",
      },
      el("p", { class: "memory-text" }, memory.text),
      el("p", { class: "meta" }, [scope, when].filter(Boolean).join(" · ")),
      this.origin(memory),
      el("div", { class: "memory-actions" }, correct, showHistory, forget),
    );
    forget.addEventListener("click", async () => {
      forget.disabled = true;
      try {
        await this.api.account.forgetMemory({ memoryId: memory.id });
        item.remove();
        this.memoriesStatus.textContent = `Forgotten: “${memory.text}”`;
      } catch (error) {
        forget.disabled = false;
        this.memoriesStatus.textContent = describeError(error);
        this.onError(error);
      }
    });
    correct.addEventListener("click", () => this.openCorrection(item, memory));
    showHistory.addEventListener("click", () => void this.toggleHistory(item, memory, showHistory));
    return item;
  }

  /** Where a memory came from: learnt from what the person told an agent (with a link to that
   * conversation), or saved when an agent was asked to remember it (or the person corrected it). */
  private origin(memory: Memory): HTMLElement {
    const agent = this.picker.name(memory.agentId);
    if (memory.source !== MemorySource.INFERRED) {
      return el("p", { class: "origin" }, `Saved by ${agent}`);
    }
    const confidence = `${Math.round(memory.confidence * 100)}% sure`;
    const parts: (string | HTMLElement)[] = [`Learnt from what you told ${agent} (${confidence})`];
    if (memory.conversationId) {
      const query = new URLSearchParams({ agent: memory.agentId, conversation: memory.conversationId });
      const link = `/?${query.toString()}`;
      parts.push(" · ", el("a", { href: link, class: "origin-link" }, "open the conversation"));
    }
    return el("p", { class: "origin" }, ...parts);
  }

  /** An inline form: the person's words become a new explicit version that supersedes the memory. */
  private openCorrection(item: HTMLElement, memory: Memory): void {
    if (item.querySelector("form.correction")) return;
    const input = el("input", {
      type: "text",
      name: "text",
      "aria-label": "Corrected memory",
      maxlength: "4000",
      required: "",
    });
    input.value = memory.text;
    const form = el(
      "form",
      { class: "correction" },
      input,
      el("button", { type: "submit" }, "Save correction"),
      el("button", { type: "button", class: "cancel" }, "Cancel"),
    );
    form.querySelector(".cancel")?.addEventListener("click", () => form.remove());
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const text = input.value.trim();
      if (!text) return;
      try {
        const response = await this.api.account.correctMemory({ memoryId: memory.id, text });
        if (response.memory) item.replaceWith(this.memoryItem(response.memory));
        this.memoriesStatus.textContent = `Corrected: “${text}”`;
      } catch (error) {
        this.memoriesStatus.textContent = describeError(error);
        this.onError(error);
      }
    });
    item.append(form);
    input.focus();
  }

  /** Shows (or hides) the fact's versions, newest first, each with when it held. */
  private async toggleHistory(item: HTMLElement, memory: Memory, button: HTMLButtonElement): Promise<void> {
    const shown = item.querySelector("ol.memory-history");
    if (shown) {
      shown.remove();
      button.setAttribute("aria-expanded", "false");
      return;
    }
    try {
      const response = await this.api.account.getMemoryHistory({ memoryId: memory.id });
      const versions = response.versions.map((version) => {
        const from = version.validFrom ? timestampDate(version.validFrom).toLocaleDateString() : "";
        const until = version.validTo ? timestampDate(version.validTo).toLocaleDateString() : "";
        const held = version.validTo ? `from ${from} until ${until}` : `current, since ${from}`;
        const source = version.source === MemorySource.INFERRED ? "learnt" : "saved";
        return el(
          "li",
          { class: version.validTo ? "version closed" : "version current" },
          el("span", { class: "version-text" }, version.text),
          el("span", { class: "meta" }, ` — ${held} (${source})`),
        );
      });
      const label = `History of “${memory.text}”`;
      item.append(el("ol", { class: "memory-history", "aria-label": label }, ...versions));
      button.setAttribute("aria-expanded", "true");
    } catch (error) {
      this.memoriesStatus.textContent = describeError(error);
      this.onError(error);
    }
  }

  /** Streams the export, joins the chunks and hands the browser a JSON file to save. */
  async exportData(): Promise<void> {
    this.exportButton.disabled = true;
    this.exportButton.setAttribute("aria-busy", "true");
    try {
      const chunks: Uint8Array<ArrayBuffer>[] = [];
      for await (const response of this.api.account.exportData({})) {
        chunks.push(new Uint8Array(response.chunk));
      }
      const url = URL.createObjectURL(new Blob(chunks, { type: "application/json" }));
      const link = el("a", { href: url, download: EXPORT_FILE_NAME, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 60_000);
    } catch (error) {
      this.onError(error);
    } finally {
      this.exportButton.disabled = false;
      this.exportButton.removeAttribute("aria-busy");
    }
  }

  private openDelete(): void {
    this.confirmation.value = "";
    this.confirmButton.disabled = true;
    this.deleteDialog.showModal();
  }

  private async deleteAccount(): Promise<void> {
    if (this.confirmation.value.trim().toLowerCase() !== CONFIRMATION_WORD) {
      return;
    }
    this.confirmButton.disabled = true;
    try {
      const deleted = await this.api.account.deleteAccount({});
      this.deleteDialog.close();
      this.onDeleted(deleted);
    } catch (error) {
      this.confirmButton.disabled = false;
      this.deleteDialog.close();
      this.onError(error);
    }
  }
}
