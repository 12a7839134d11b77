// Browser side of the opendo chat example. No framework, no build step.
//
// One WebSocket to this page's own path; every frame is a JSON object (README.md has it all):
//   server -> client  {"id": n}                               first: our id in the room
//                     {"type": "history", "messages": [...]}  then: the last messages
//                     {"type": "presence", "users": [...]}    who is here, on every change
//                     {"type": "join" | "leave" | "rename", "user": {"id", "name"}}
//                     {"type": "error", "error": code, "message": text}
//                     {"from", "text", "name", "at"}          a message, to everyone (us too)
//   client -> server  {"text": t}                             send a message
//                     {"type": "name", "name": n}             set our display name
// Anything else (not JSON, an unknown shape or type) is ignored.

'use strict';

const $ = (id) => document.getElementById(id);

// The room is the path without its leading slash, e.g. "/my%20room" -> "my room".
function roomName() {
  const raw = location.pathname.slice(1);
  try {
    return decodeURIComponent(raw);
  } catch {
    return raw; // malformed escape: show it as it is
  }
}

// ---------------------------------------------------------------- landing

function randomRoomName(length = 8) {
  const alphabet = 'abcdefghijklmnopqrstuvwxyz0123456789';
  const values = crypto.getRandomValues(new Uint32Array(length));
  return Array.from(values, (v) => alphabet[v % alphabet.length]).join('');
}

function showLanding() {
  $('landing').hidden = false;

  $('new-room').addEventListener('click', () => {
    location.assign('/' + randomRoomName());
  });

  $('join-form').addEventListener('submit', (event) => {
    event.preventDefault();
    const name = $('join-name').value.trim();
    if (name) location.assign('/' + encodeURIComponent(name));
  });
}

// ------------------------------------------------------------------- chat

const MAX_FRAME_BYTES = 4096; // the server refuses bigger frames (too_large)
const NAME_KEY = 'opendo-chat-name'; // localStorage: our display name, for every room
const MAX_NAME = 32; // characters, as the server counts them (code points)

// Storage can be missing or refuse us (private modes, file://): then we just don't remember.
function load(kind, key) {
  try {
    return window[kind].getItem(key);
  } catch {
    return null;
  }
}

function save(kind, key, value) {
  try {
    if (value === null) window[kind].removeItem(key);
    else window[kind].setItem(key, value);
  } catch {
    // not remembered; nothing else depends on it
  }
}

// A new element with a class and text. Text from the network only ever goes in through
// textContent, never innerHTML: it must not be parsed as HTML.
function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function hhmm(date) {
  const two = (n) => String(n).padStart(2, '0');
  return `${two(date.getHours())}:${two(date.getMinutes())}`;
}

function validName(name) {
  const length = [...name].length;
  return length >= 1 && length <= MAX_NAME && !/\p{Cc}/u.test(name);
}

const isMessage = (frame) => typeof frame.text === 'string' && 'from' in frame;

// USER frames as {id, name}, with name null when unset; anything else is null.
function asUser(user) {
  if (user === null || typeof user !== 'object' || !Number.isInteger(user.id)) return null;
  return { id: user.id, name: typeof user.name === 'string' && user.name ? user.name : null };
}

function showChat(room) {
  $('chat').hidden = false;
  $('room').textContent = room;
  document.title = `${room} · opendo chat`;

  const list = $('messages');
  const input = $('input');
  const sendButton = $('send');
  const nameInput = $('name');
  const toggle = $('people-toggle');

  // Every id this tab has had in this room, so our messages from before a reconnect are
  // still "me". Per tab (sessionStorage): another tab is another person.
  const idsKey = `opendo-chat-ids:${room}`;
  const myIds = new Set();
  try {
    for (const id of JSON.parse(load('sessionStorage', idsKey)) || []) {
      if (Number.isInteger(id)) myIds.add(id);
    }
  } catch {
    // nothing usable stored
  }

  let socket = null; // the current WebSocket, null while waiting to reconnect
  let myId = null; // our id on the current connection, null until its {"id"} frame
  let myName = null; // our name as the server last confirmed it
  let sentName = null; // the last name we sent on this connection
  let autoName = null; // the saved name sent on connect: its rename echo is no news
  let lastText = null; // our last message, put back in the box if the server refuses it
  let lastJoin = null; // {id, item}: a join line that a following rename may complete
  let attempt = 0; // connections failed since the last good one: sets the backoff
  let retryTimer = null;
  let countdown = null;
  const names = new Map(); // id -> name (or null) of the people here, for the system lines

  const connected = () => myId !== null && socket !== null && socket.readyState === WebSocket.OPEN;
  const label = (user) => user.name || `user ${user.id}`;

  function setStatus(state, text) {
    $('status').dataset.state = state;
    $('status').textContent = text;
  }

  function showConnected() {
    setStatus('connected', `connected as ${myName || `user ${myId}`}`);
  }

  function setEnabled(enabled) {
    input.disabled = !enabled;
    sendButton.disabled = !enabled;
  }

  // ------------------------------------------------------------ the message list

  // While the reader is at the bottom (not reading back), keep the newest line in view: as
  // lines come, and as the list resizes (a phone's keyboard opening, a rotation).
  let stuck = true;
  list.addEventListener('scroll', () => {
    stuck = list.scrollHeight - list.scrollTop - list.clientHeight < 60;
  });
  new ResizeObserver(() => {
    if (stuck) list.scrollTop = list.scrollHeight;
  }).observe(list);

  function append(item, follow = false) {
    list.append(item);
    if (follow || stuck) list.scrollTop = list.scrollHeight;
    return item;
  }

  function messageItem(frame) {
    const mine = myIds.has(frame.from);
    const item = el('li', mine ? 'message mine' : 'message');

    const name = typeof frame.name === 'string' && frame.name ? frame.name : null;
    const sender = el('span', 'sender', mine ? 'me' : name || `user ${frame.from}`);

    const time = el('time', 'time');
    const date = new Date(typeof frame.at === 'number' ? frame.at : NaN);
    if (Number.isFinite(date.getTime())) {
      time.dateTime = date.toISOString();
      time.textContent = hhmm(date);
      time.title = date.toLocaleString();
    }

    const meta = el('div', 'meta');
    meta.append(sender, ' ', time);
    item.append(meta, el('div', 'text', frame.text));
    return item;
  }

  function systemLine(text, extraClass = '') {
    return append(el('li', `message system ${extraClass}`.trim(), text));
  }

  function localError(text) {
    systemLine(text, 'error local');
  }

  // ---------------------------------------------------------------- the frames

  function onHello(id) {
    myId = id;
    attempt = 0; // a good connection: the next reconnect starts quick again
    myIds.add(id);
    save('sessionStorage', idsKey, JSON.stringify([...myIds]));
    myName = null;
    sentName = null;
    autoName = null;
    lastJoin = null;
    names.clear();
    showConnected();
    setEnabled(true);
    if (!document.activeElement || document.activeElement === document.body) input.focus();

    const saved = load('localStorage', NAME_KEY);
    if (saved && validName(saved)) {
      autoName = saved;
      sendName(saved);
    }
  }

  // Replace, not append: a reconnect catches up without duplicates.
  function onHistory(messages) {
    list.replaceChildren(
      ...messages.filter((m) => m !== null && typeof m === 'object' && isMessage(m)).map(messageItem),
    );
    lastJoin = null;
    list.scrollTop = list.scrollHeight;
  }

  function onMessage(frame) {
    const mine = frame.from === myId;
    if (mine && frame.text === lastText) lastText = null; // it went through
    append(messageItem(frame), mine);
  }

  // The member list: a snapshot (presence) when we join, then join/leave/rename changes.
  let othersUnlisted = 0; // in a big room the snapshot lists only the first members

  function onPresence(users, count) {
    users = users.map(asUser).filter(Boolean);
    names.clear();
    for (const u of users) names.set(u.id, u.name);
    othersUnlisted = Number.isInteger(count) ? Math.max(0, count - users.length) : 0;
    renderMembers();
  }

  function renderMembers() {
    const users = [...names.entries()]
      .map(([id, name]) => ({ id, name }))
      .sort((a, b) => a.id - b.id);
    $('users').replaceChildren(
      ...users.map((u) => {
        const item = el('li', u.id === myId ? 'me' : '', label(u));
        item.dataset.id = String(u.id);
        if (u.name) item.title = `user ${u.id}`;
        if (u.id === myId) item.append(' ', el('span', 'you', '(you)'));
        return item;
      }),
    );
    $('user-count').textContent = `${users.length + othersUnlisted} here`;
    $('user-summary').textContent = users.map((u) => (u.id === myId ? 'you' : label(u))).join(', ');

    const me = users.find((u) => u.id === myId);
    if (me && me.name !== myName) {
      myName = me.name;
      showConnected();
    }
  }

  function onJoin(user) {
    names.set(user.id, user.name);
    renderMembers();
    lastJoin = { id: user.id, item: systemLine(`${label(user)} joined`) };
  }

  function onLeave(user) {
    const name = user.name || names.get(user.id);
    names.delete(user.id);
    renderMembers();
    systemLine(`${name || `user ${user.id}`} left`);
  }

  function onRename(user) {
    const before = names.has(user.id) ? names.get(user.id) : null;
    names.set(user.id, user.name);
    renderMembers();
    if (user.id === myId) {
      myName = user.name;
      showConnected();
      if (user.name === autoName) autoName = null; // our saved name, set again on connect
      else if (user.name !== before) systemLine(`you are now ${label(user)}`);
      return;
    }
    if (user.name === before) return;
    if (lastJoin && lastJoin.id === user.id && list.lastElementChild === lastJoin.item) {
      lastJoin.item.textContent = `${label(user)} joined`; // "user 5 joined" + name: one line
      return;
    }
    systemLine(`${before || `user ${user.id}`} is now ${label(user)}`);
  }

  function onError(frame) {
    const text = typeof frame.message === 'string' && frame.message ? frame.message : null;
    systemLine(text || `error: ${frame.error || 'unknown'}`, 'error');
    // A refused message: give it back to its author instead of losing it.
    const refused = ['rate_limited', 'too_large', 'empty_text', 'missing_text', 'storage_failed'];
    if (lastText !== null && refused.includes(frame.error) && !input.value) {
      input.value = lastText;
    }
    lastText = null;
  }

  function onFrame(data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return; // not JSON
    }
    if (frame === null || typeof frame !== 'object' || Array.isArray(frame)) return;

    if (!('type' in frame)) {
      if (isMessage(frame)) onMessage(frame);
      else if (Number.isInteger(frame.id)) onHello(frame.id);
      return;
    }
    const user = asUser(frame.user);
    switch (frame.type) {
      case 'history':
        if (Array.isArray(frame.messages)) onHistory(frame.messages);
        break;
      case 'presence':
        if (Array.isArray(frame.users)) onPresence(frame.users, frame.count);
        break;
      case 'join':
        if (user) onJoin(user);
        break;
      case 'leave':
        if (user) onLeave(user);
        break;
      case 'rename':
        if (user) onRename(user);
        break;
      case 'error':
        onError(frame);
        break;
      default:
        break; // a type this page doesn't know
    }
  }

  // ------------------------------------------------------------- the connection

  function connect() {
    clearTimeout(retryTimer);
    clearInterval(countdown);
    retryTimer = countdown = null;

    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const ws = new WebSocket(`${scheme}://${location.host}${location.pathname}`);
    socket = ws;
    ws.addEventListener('message', (event) => {
      if (socket === ws) onFrame(event.data);
    });
    ws.addEventListener('close', () => {
      if (socket === ws) reconnectLater();
    });
  }

  // Exponential backoff: 0.5 s, 1, 2, 4, 8, then 10 s at most, each up to 20% shorter at
  // random, so a restarted server isn't hit by every client at the same moment.
  function reconnectLater() {
    socket = null;
    myId = null;
    setEnabled(false);
    const delay = Math.min(10000, 500 * 2 ** attempt) * (0.8 + 0.2 * Math.random());
    attempt = Math.min(attempt + 1, 10);
    const until = Date.now() + delay;
    const tick = () => {
      const seconds = Math.max(1, Math.ceil((until - Date.now()) / 1000));
      setStatus('reconnecting', `reconnecting in ${seconds}s…`);
    };
    tick();
    countdown = setInterval(tick, 250);
    retryTimer = setTimeout(() => {
      setStatus('reconnecting', 'reconnecting…');
      connect();
    }, delay);
  }

  // Back online: no need to wait out the backoff.
  window.addEventListener('online', () => {
    if (retryTimer !== null) {
      setStatus('reconnecting', 'reconnecting…');
      connect();
    }
  });

  // ------------------------------------------------------------------ sending

  function send() {
    const text = input.value;
    if (!text.trim() || !connected()) return;
    const frame = JSON.stringify({ text });
    const bytes = new TextEncoder().encode(frame).length;
    if (bytes > MAX_FRAME_BYTES) {
      localError(`Too long to send: ${bytes} bytes, the limit is ${MAX_FRAME_BYTES}.`);
      return;
    }
    socket.send(frame);
    lastText = text;
    input.value = '';
    input.focus();
  }

  $('composer').addEventListener('submit', (event) => {
    event.preventDefault();
    send();
  });

  // Enter sends; Shift+Enter (and Enter while composing with an IME) inserts a newline.
  input.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      send();
    }
  });

  // ------------------------------------------------------------------- the name

  function sendName(name) {
    socket.send(JSON.stringify({ type: 'name', name }));
    sentName = name;
  }

  // On change (blur, or Enter below): remember the name, and tell the room.
  function commitName() {
    const name = nameInput.value.trim();
    nameInput.value = name;
    if (name && !validName(name)) {
      localError(`A name is 1 to ${MAX_NAME} characters, without control characters.`);
      return;
    }
    save('localStorage', NAME_KEY, name || null);
    if (name && name !== sentName && connected()) {
      autoName = null;
      sendName(name);
    }
  }

  nameInput.value = load('localStorage', NAME_KEY) || '';
  nameInput.addEventListener('change', commitName);
  nameInput.addEventListener('keydown', (event) => {
    if (event.key === 'Enter' && !event.isComposing) {
      event.preventDefault();
      // Leaving the field fires "change" (once); go on to the message box if we can.
      if (input.disabled) nameInput.blur();
      else input.focus();
    }
  });

  // ----------------------------------------------------------- the member list

  // On phones the list folds into a one-line summary; this opens it (CSS does the rest).
  toggle.addEventListener('click', () => {
    const open = toggle.getAttribute('aria-expanded') !== 'true';
    toggle.setAttribute('aria-expanded', String(open));
  });

  connect();
}

// ------------------------------------------------------------------- start

const room = roomName();
if (room) {
  showChat(room);
} else {
  showLanding();
}
