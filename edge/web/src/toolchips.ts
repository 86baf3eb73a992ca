// What an agent's tools found, as small readable chips under its answer: busy blocks, events, a day's
// steps, the files found. Built from each tool's result JSON (orchestrator/tools/*.py), tolerantly: a
// result is shown by the keys it has, and one this file cannot read shows the tool's name. Sources that
// could not answer (a calendar to connect again) become warning chips linking to the Connections panel.
import { el } from "./dom";
import { CONNECTIONS_PATH } from "./address";

type Json = Record<string, unknown>;

/** Most items a chip lists before "+N more". */
const MAX_ITEMS = 8;

const time = new Intl.DateTimeFormat(undefined, { hour: "2-digit", minute: "2-digit" });
const day = new Intl.DateTimeFormat(undefined, { weekday: "short", day: "numeric", month: "short" });
const number = new Intl.NumberFormat(undefined, { maximumFractionDigits: 1 });

/** The chips of one tool result; never empty (at least the tool's name). */
export function toolChips(name: string, resultJson: string, isError: boolean): HTMLElement[] {
  const result = parseObject(resultJson);
  if (isError) {
    const message = typeof result?.error === "string" ? result.error : `${name} failed`;
    return [warningChip(name, message, /connect/i.test(message))];
  }
  if (result === null) {
    return [chip(name, name)];
  }
  const body = RENDERERS[name]?.(result, name) ?? [];
  return [...(body.length > 0 ? body : [chip(name, name)]), ...warnings(name, result)];
}

const RENDERERS: Readonly<Record<string, (result: Json, name: string) => HTMLElement[]>> = {
  calendar_freebusy: freeBusy,
  calendar_events: events,
  wearable_stats: wearable,
  file_search: (result, name) => {
    const files = objects(result.files);
    if (files === null) {
      return [];
    }
    if (files.length === 0) {
      return [chip(name, "No matching files")];
    }
    return [...files.slice(0, MAX_ITEMS).map((file) => fileChip(name, file)), ...more(name, files.length)];
  },
  file_read: (result, name) => (text(result.name) ? [fileChip(name, result)] : []),
};

function freeBusy(result: Json, name: string): HTMLElement[] {
  const blocks = objects(result.busy)
    ?.map((block) => ({ start: date(block.start), end: date(block.end) }))
    .filter((block): block is { start: Date; end: Date } => block.start !== null && block.end !== null);
  if (blocks === undefined) {
    return [];
  }
  if (blocks.length === 0) {
    return [chip(name, "No busy time")];
  }
  // Blocks grouped by the day they start on (the reader's time zone); the day is named unless every
  // block is today.
  const days = new Map<string, string[]>();
  for (const block of blocks.slice(0, MAX_ITEMS)) {
    const label = dayLabel(block.start);
    const span = sameDay(block.start, block.end)
      ? `${time.format(block.start)}–${time.format(block.end)}`
      : `${time.format(block.start)} – ${dayLabel(block.end)} ${time.format(block.end)}`;
    days.set(label, [...(days.get(label) ?? []), span]);
  }
  const onlyToday = days.size === 1 && days.has("today");
  const parts = [...days].map(([label, spans]) => (onlyToday ? "" : `${label} `) + spans.join(", "));
  const extra = blocks.length > MAX_ITEMS ? ` +${blocks.length - MAX_ITEMS} more` : "";
  return [chip(name, `Busy ${parts.join("; ")}${extra}`)];
}

function events(result: Json, name: string): HTMLElement[] {
  const found = objects(result.events);
  if (found === null) {
    return [];
  }
  if (found.length === 0) {
    return [chip(name, "No events")];
  }
  return [
    ...found.slice(0, MAX_ITEMS).map((event) => {
      const title = text(event.title) || text(event.summary) || "(no title)";
      const start = date(event.start);
      const end = date(event.end);
      let when = "";
      if (event.all_day === true || (start === null && text(event.start_date))) {
        when = text(event.start_date) ? `${civilDayLabel(text(event.start_date))}, all day` : "All day";
      } else if (start !== null) {
        const until = end && sameDay(start, end) ? `–${time.format(end)}` : "";
        when = `${dayLabel(start)} ${time.format(start)}${until}`;
      }
      return chip(name, when ? `${title} · ${when}` : title);
    }),
    ...more(name, found.length),
  ];
}

/** How a wearable metric reads: its name, its unit, and whether a day's value is a total. */
const METRICS: Readonly<Record<string, { label: string; unit: string; total: boolean }>> = {
  steps: { label: "Steps", unit: "", total: true },
  heart_rate: { label: "Heart rate", unit: "bpm", total: false },
  resting_heart_rate: { label: "Resting heart rate", unit: "bpm", total: false },
  sleep_minutes: { label: "Sleep", unit: "min", total: true },
  active_energy_kcal: { label: "Active energy", unit: "kcal", total: true },
  weight_kg: { label: "Weight", unit: "kg", total: false },
  workout_minutes: { label: "Workouts", unit: "min", total: true },
};

function wearable(result: Json, name: string): HTMLElement[] {
  const metricName = text(result.metric);
  const metric = METRICS[metricName] ?? { label: metricName || "Value", unit: "", total: false };
  // "count" (steps) reads best without a unit.
  const given = text(result.unit);
  const unit = given && given !== "count" ? given : metric.unit;
  const amount = (value: number): string => {
    if (unit === "min" && value >= 60) {
      const minutes = Math.round(value);
      return `${Math.floor(minutes / 60)} h ${minutes % 60} min`;
    }
    return unit ? `${number.format(value)} ${unit}` : number.format(value);
  };
  const days = objects(result.days)?.filter((d) => typeof d.value === "number" && text(d.date));
  if (days) {
    if (days.length === 0) {
      return [chip(name, `${metric.label}: no data`)];
    }
    const values = days
      .slice(-MAX_ITEMS)
      .map((d) => `${civilDayLabel(text(d.date))} ${amount(d.value as number)}`);
    if (days.length === 1) {
      const only = days[0]!;
      const on = onDay(civilDayLabel(text(only.date)));
      return [chip(name, `${metric.label}: ${amount(only.value as number)} ${on}`)];
    }
    const earlier = days.length > MAX_ITEMS ? ` (last ${MAX_ITEMS} of ${days.length} days)` : "";
    return [chip(name, `${metric.label}: ${values.join(" · ")}${earlier}`)];
  }
  // A summary over a range: {metric, range, samples, total, average, min, max}.
  const range = text(result.range);
  const over = range === "today" ? "today" : /^\d+d$/.test(range) ? `over ${range.slice(0, -1)} days` : range;
  if (result.samples === 0) {
    return [chip(name, `${metric.label}: no data${over ? ` ${over}` : ""}`)];
  }
  const value = metric.total ? result.total : result.average;
  if (typeof value !== "number") {
    return [];
  }
  const average = metric.total ? "" : " average";
  return [chip(name, `${metric.label}: ${amount(value)}${average}${over ? ` ${over}` : ""}`)];
}

/** What a result says could not answer (`unavailable`, `problems`, `_caveats`) or is missing (`note`). */
function warnings(name: string, result: Json): HTMLElement[] {
  const said: { message: string; reconnect: boolean }[] = [];
  for (const key of ["unavailable", "problems", "_caveats"]) {
    const items = result[key];
    if (!Array.isArray(items)) {
      continue;
    }
    for (const item of items as unknown[]) {
      if (typeof item === "string" && item) {
        said.push({ message: item, reconnect: /connect/i.test(item) });
      } else if (isObject(item) && text(item.message)) {
        said.push({ message: text(item.message), reconnect: item.needs_reconnect === true });
      }
    }
  }
  if (text(result.note)) {
    said.push({ message: text(result.note), reconnect: /connect/i.test(text(result.note)) });
  }
  return said.map(({ message, reconnect }) => warningChip(name, message, reconnect));
}

/** A warning; linked to the Connections panel (where a source is connected again) unless `linked` is false
 * and the message says nothing of connecting. */
function warningChip(name: string, message: string, linked: boolean): HTMLElement {
  const content = [el("span", { "aria-hidden": "true" }, "⚠ "), message];
  if (linked) {
    return el(
      "a",
      { class: "chip warning", href: CONNECTIONS_PATH, "data-tool": name, title: "Open Connections" },
      ...content,
    );
  }
  return el("span", { class: "chip warning", "data-tool": name }, ...content);
}

function fileChip(name: string, file: Json): HTMLElement {
  const label = text(file.name) || "(untitled)";
  const link = safeLink(file.link);
  if (link === null) {
    return chip(name, label);
  }
  return el(
    "a",
    { class: "chip file", href: link, target: "_blank", rel: "noopener noreferrer", "data-tool": name },
    label,
  );
}

function chip(name: string, label: string): HTMLElement {
  return el("span", { class: "chip", "data-tool": name }, label);
}

function more(name: string, count: number): HTMLElement[] {
  return count > MAX_ITEMS ? [chip(name, `+${count - MAX_ITEMS} more`)] : [];
}

function dayLabel(moment: Date): string {
  const today = startOfDay(new Date());
  const days = Math.round((startOfDay(moment).getTime() - today.getTime()) / 86_400_000);
  return days === 0 ? "today" : days === 1 ? "tomorrow" : days === -1 ? "yesterday" : day.format(moment);
}

/** "today", or "on Tue 13 May". */
function onDay(label: string): string {
  return ["today", "yesterday", "tomorrow"].includes(label) ? label : `on ${label}`;
}

/** A civil date ("2025-05-14", no time zone) named as `dayLabel` names a moment of that day. */
function civilDayLabel(value: string): string {
  const match = /^(\d{4})-(\d{2})-(\d{2})$/.exec(value);
  return match ? dayLabel(new Date(Number(match[1]), Number(match[2]) - 1, Number(match[3]), 12)) : value;
}

function startOfDay(moment: Date): Date {
  return new Date(moment.getFullYear(), moment.getMonth(), moment.getDate());
}

function sameDay(a: Date, b: Date): boolean {
  // An end at midnight closes the day it started on.
  const end = new Date(b.getTime() - 1);
  return startOfDay(a).getTime() === startOfDay(end).getTime();
}

function date(value: unknown): Date | null {
  const raw = isObject(value) ? (value.dateTime ?? value.date) : value;
  if (typeof raw !== "string" || !raw) {
    return null;
  }
  const parsed = new Date(raw);
  return Number.isNaN(parsed.getTime()) ? null : parsed;
}

function safeLink(value: unknown): string | null {
  if (typeof value !== "string") {
    return null;
  }
  try {
    const url = new URL(value);
    return url.protocol === "https:" || url.protocol === "http:" ? url.href : null;
  } catch {
    return null;
  }
}

function parseObject(json: string): Json | null {
  try {
    const parsed: unknown = JSON.parse(json);
    return isObject(parsed) ? parsed : null;
  } catch {
    return null;
  }
}

function objects(value: unknown): Json[] | null {
  return Array.isArray(value) ? (value as unknown[]).filter(isObject) : null;
}

function isObject(value: unknown): value is Json {
  return typeof value === "object" && value !== null && !Array.isArray(value);
}

function text(value: unknown): string {
  return typeof value === "string" ? value : "";
}
