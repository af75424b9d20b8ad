// Shared by the server tests: concept images, multipart job posts and a server-sent-events reader.
import { mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { Rng, randomAttributes, render, writePng } from '../../src/shapes/index.ts';

export const FIXTURES = new URL('../fixtures/', import.meta.url).pathname;
export const BIN = new URL('../../bin/oneword.js', import.meta.url).pathname;

/** `n` PNGs of a dotted orange star in `dir`; returns their paths. */
export async function conceptImages(dir: string, n = 4): Promise<string[]> {
  mkdirSync(dir, { recursive: true });
  const rng = new Rng(5);
  return Promise.all(Array.from({ length: n }, async (_, i) => {
    const p = join(dir, `star-${i}.png`);
    await writePng(render(randomAttributes(rng, { shape: 'star', color: 'orange', texture: 'dotted' }), rng), p);
    return p;
  }));
}

/** POST /api/jobs with the images and fields; returns the status and JSON body. */
export async function postJob(base: string, fields: Record<string, string | number>, images: string[], headers: Record<string, string> = {}): Promise<{ status: number; body: { id?: string; error?: string } }> {
  const form = new FormData();
  for (const [k, v] of Object.entries(fields)) form.append(k, String(v));
  for (const p of images) form.append('images', new Blob([readFileSync(p)]), p.split('/').pop());
  const r = await fetch(new URL('/api/jobs', base), { method: 'POST', body: form, headers });
  return { status: r.status, body: await r.json() };
}

export async function getJson<T = Record<string, unknown>>(base: string, path: string, init?: RequestInit): Promise<{ status: number; body: T }> {
  const r = await fetch(new URL(path, base), init);
  return { status: r.status, body: (await r.json()) as T };
}

export interface SseEvent {
  event: string;
  data: Record<string, unknown>;
}

/**
 * Reads a job's events until `until` returns true for one (that one included), and
 * returns them all. Gives up after `timeoutMs`.
 */
export async function readEvents(base: string, id: string, until: (e: SseEvent) => boolean, timeoutMs = 600_000): Promise<SseEvent[]> {
  const stop = new AbortController();
  const timer = setTimeout(() => stop.abort(), timeoutMs);
  const seen: SseEvent[] = [];
  try {
    const r = await fetch(new URL(`/api/jobs/${id}/events`, base), { signal: stop.signal });
    const decoder = new TextDecoder();
    let buf = '';
    for await (const chunk of r.body as unknown as AsyncIterable<Uint8Array>) {
      buf += decoder.decode(chunk, { stream: true });
      let end;
      while ((end = buf.indexOf('\n\n')) >= 0) {
        const block = buf.slice(0, end);
        buf = buf.slice(end + 2);
        const event = /^event: ?(.*)$/m.exec(block)?.[1];
        const data = /^data: ?(.*)$/m.exec(block)?.[1];
        if (!event || data === undefined) continue;
        const e = { event, data: JSON.parse(data) as Record<string, unknown> };
        seen.push(e);
        if (until(e)) return seen;
      }
    }
    throw new Error(`event stream of ${id} ended; saw ${seen.map((e) => e.event).join(', ')}`);
  } catch (e) {
    if (stop.signal.aborted) throw new Error(`no matching event from job ${id} within ${timeoutMs} ms; saw ${seen.map((x) => `${x.event}:${x.data.step ?? x.data.state ?? ''}`).join(', ')}`);
    throw e;
  } finally {
    clearTimeout(timer);
    stop.abort();
  }
}

/** Until the job reaches one of `states`. */
export const untilState = (...states: string[]) => (e: SseEvent) => e.event === 'state' && states.includes(e.data.state as string);
