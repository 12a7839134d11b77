// Browser side of the opendo chat example. No framework, no build step.
//
// Protocol (JSON text frames over a WebSocket to this page's own path):
//   server -> client  {"id": n}                 first frame: our number in the room
//   client -> server  {"from": id, "text": t}   send a message
//   server -> client  {"from": id, "text": t}   a message, broadcast to everyone (us included)
// Anything else (not JSON, unknown shape, or a "type" we don't know) is ignored.

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

function showChat(room) {
  $('chat').hidden = false;
  $('room').textContent = room;
  document.title = `${room} · opendo chat`;

  const list = $('messages');
  const input = $('input');
  const sendButton = $('send');
  let myId = null;

  function setStatus(state, text) {
    $('status').dataset.state = state;
    $('status').textContent = text;
  }

  function setEnabled(enabled) {
    input.disabled = !enabled;
    sendButton.disabled = !enabled;
  }

  // Build the message with DOM nodes and textContent, never innerHTML:
  // message text comes from other users and must not be parsed as HTML.
  function addMessage(from, text) {
    const mine = from === myId;

    const item = document.createElement('li');
    item.className = mine ? 'message mine' : 'message';

    const sender = document.createElement('div');
    sender.className = 'sender';
    sender.textContent = mine ? 'me' : `user ${from}`;

    const body = document.createElement('div');
    body.className = 'text';
    body.textContent = text;

    item.append(sender, body);
    list.append(item);
    list.scrollTop = list.scrollHeight; // keep the newest message in view
  }

  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  const socket = new WebSocket(`${scheme}://${location.host}${location.pathname}`);

  socket.addEventListener('message', (event) => {
    let frame;
    try {
      frame = JSON.parse(event.data);
    } catch {
      return; // not JSON
    }
    if (frame === null || typeof frame !== 'object' || 'type' in frame) {
      return; // unknown shape, or a typed frame this page doesn't know yet
    }
    if (typeof frame.text === 'string' && 'from' in frame) {
      addMessage(frame.from, frame.text);
    } else if (typeof frame.id === 'number') {
      myId = frame.id;
      setStatus('connected', `connected as user ${myId}`);
      setEnabled(true);
      input.focus();
    }
  });

  socket.addEventListener('close', () => {
    setStatus('disconnected', 'disconnected (reload to reconnect)');
    setEnabled(false);
  });

  function send() {
    const text = input.value;
    if (!text.trim() || myId === null || socket.readyState !== WebSocket.OPEN) return;
    socket.send(JSON.stringify({ from: myId, text }));
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
}

// ------------------------------------------------------------------- start

const room = roomName();
if (room) {
  showChat(room);
} else {
  showLanding();
}
