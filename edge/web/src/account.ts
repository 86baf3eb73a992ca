// What a person controls about their data: the memories their agents keep (with delete), a download of
// everything (GDPR Art. 15/20) and the deletion of the account (Art. 17), after typed confirmation.
import { timestampDate } from "@bufbuild/protobuf/wkt";
import {
  MemoryScope,
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
    try {
      const response = await this.api.account.listMemories({ pageSize: 100 });
      this.renderMemories(response.memories);
    } catch (error) {
      this.memoriesStatus.textContent = describeError(error);
      this.onError(error);
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
    const label = `Forget “${memory.text}”`;
    const forget = el("button", { type: "button", class: "forget", "aria-label": label }, "Forget");
    const item = el(
      "li",
      { class: "memory", "data-id": memory.id },
      el("p", { class: "memory-text" }, memory.text),
      el(
        "p",
        { class: "meta" },
        memory.createdAt ? `${scope} · ${timestampDate(memory.createdAt).toLocaleDateString()}` : scope,
      ),
      forget,
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
    return item;
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
