// The billing page's behaviour: live updates (short polling), paying, automatic recharge.
// Same-origin requests only; every write carries the page's CSRF token.
"use strict";
(function () {
  const csrf = document.querySelector('meta[name="csrf-token"]').content;
  const $ = (id) => document.getElementById(id);
  const balance = $("balance-value");
  const paySubmit = $("pay-now");
  const autoSwitch = $("auto-switch");
  let payKey = document.body.dataset.payKey;  // one payment per key: a double click pays once
  let paying = false;
  let switchTurnedOnHere = false;  // turned on in the page, not saved yet
  let payBlocked = paySubmit.disabled;
  let timer = null;
  let expired = false;
  let pendingSoon = false;  // a payment or recharge in flight: look again sooner
  let generation = 0;  // bumped by each change made here: older poll answers are dropped
  let changing = 0;  // changes in flight: poll answers wait for them
  let pendingPayment = null;  // amount text of a payment this page said is pending
  let autoSavedOn = false;  // this page said automatic recharge is on

  function say(el, text, kind) {
    el.textContent = text || "";
    el.className = "message" + (kind ? " " + kind : "");
  }

  async function send(method, path, body) {
    const response = await fetch(path, {
      method, credentials: "same-origin", cache: "no-store",
      headers: { "Content-Type": "application/json", "Accept": "application/json",
                 "X-CSRF-Token": csrf },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    let data = {};
    try { data = await response.json(); } catch (e) { data = {}; }
    if (response.status === 401) {
      stop("This link has expired. Open Account > Billing again to get a new one.");
    } else if (response.status === 403 && data.error && data.error.code === "csrf_failed") {
      stop("Another billing link was opened in this browser since this page was. Reload it.");
    }
    return { status: response.status, data };
  }

  // The session ended (or was replaced): show nothing more, change nothing.
  function stop(why) {
    if (expired) return;
    expired = true;
    clearTimeout(timer);
    const note = $("session-note");
    note.textContent = why;
    note.hidden = false;
    document.querySelectorAll("button, input").forEach((el) => { el.disabled = true; });
  }

  function apply(state) {
    if (!state || !state.parts) return;
    if (balance.textContent !== state.balance_text) balance.textContent = state.balance_text;
    balance.classList.toggle("exhausted", state.exhausted);
    balance.classList.toggle("negative", state.negative);
    for (const [name, html] of Object.entries(state.parts)) {
      const el = $("part-" + name);
      if (el && el.dataset.html !== html) { el.innerHTML = html; el.dataset.html = html; }
    }
    payBlocked = Boolean(state.pay_blocked);
    paySubmit.disabled = payBlocked || paying;
    if (!switchTurnedOnHere) autoSwitch.checked = state.auto_recharge.enabled;
    pendingSoon = document.querySelector(".payment.pending, .payment.requested, .note.info") !== null;
    // What this page said earlier must not contradict what it shows now.
    if (pendingPayment !== null
        && !document.querySelector(".payment.pending, .payment.requested")) {
      const latest = document.querySelector(".payments .payment");
      if (latest && latest.classList.contains("succeeded")) {
        say($("pay-message"), "Paid: " + pendingPayment + " added to your credit.", "success");
      } else {
        say($("pay-message"), "The payment of " + pendingPayment + " did not go through: see below.", "error");
      }
      pendingPayment = null;
    }
    if (autoSavedOn && !state.auto_recharge.enabled) {
      say($("auto-message"), "");  // the status above says why it is off
      autoSavedOn = false;
    }
  }

  async function refresh() {
    if (expired) return;
    const asked = generation;
    try {
      const { status, data } = await send("GET", "/billing/state");
      if (status === 200 && asked === generation && changing === 0) apply(data);
    } catch (e) { /* offline for a moment: the next poll tries again */ }
    schedule();
  }

  function schedule() {
    clearTimeout(timer);
    if (expired) return;
    timer = setTimeout(refresh, document.hidden ? 10000 : pendingSoon ? 1000 : 2000);
  }

  document.addEventListener("visibilitychange", () => { if (!document.hidden) refresh(); });

  // --- one-time adding credit ---
  $("pay-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    if (paying || payBlocked) return;
    const chosen = document.querySelector('input[name="amount"]:checked');
    const message = $("pay-message");
    if (!chosen) { say(message, "Choose an amount.", "error"); return; }
    paying = true;
    paySubmit.disabled = true;
    document.querySelectorAll('input[name="amount"]').forEach((el) => { el.disabled = true; });
    say(message, "Paying…");
    pendingPayment = null;
    generation++;
    changing++;
    try {
      const { status, data } = await send("POST", "/billing/pay",
                                          { amount: chosen.value, idempotency_key: payKey });
      generation++;
      if (data.next_idempotency_key) payKey = data.next_idempotency_key;
      if (status === 200) {
        say(message, "Paid: " + data.amount_text + " added to your credit.", "success");
      } else if (status === 202) {
        say(message, "Payment of " + data.amount_text +
            " pending: your bank may take a while. The credit shows here when it arrives.");
        pendingPayment = data.amount_text;
      } else if (status === 402) {
        say(message, "Payment declined: " + data.error.reason_text, "error");
      } else if (status === 503) {
        // The payment is kept and asked about again by the engine: paying again (from
        // a reloaded page, with a new key) would be a second payment.
        const label = document.querySelector('label[for="' + chosen.id + '"]');
        const text = label ? label.textContent.trim() : chosen.value;
        say(message, "The payment service did not answer. Your payment of " + text +
            " is kept and completes by itself when it answers; it shows below. Do not pay again.");
        pendingPayment = text;
      } else if (status === 409) {
        say(message, "A payment from this page may already have gone through: check the" +
            " payments below before paying again.", "error");
      } else if (status === 401 || status === 403) {
        say(message, "Not paid: this page's link no longer works (see the note above).", "error");
      } else {
        say(message, (data.error && data.error.message) || "The payment could not be made.", "error");
      }
      if (data.state) apply(data.state); else refresh();
    } catch (e) {
      say(message, "No connection: the payment may or may not have been made. Pay Now again" +
          " for the same amount is the same payment (never charged twice); check the payments" +
          " below first.", "error");
    } finally {
      changing--;
      paying = false;
      // The button was disabled while paying, which dropped the keyboard's focus: give
      // it back, to the button or, when paying is blocked now, to the message.
      const lost = !document.activeElement || document.activeElement === document.body;
      document.querySelectorAll('input[name="amount"]').forEach((el) => { el.disabled = expired; });
      paySubmit.disabled = payBlocked || expired;
      if (lost && !expired) (paySubmit.disabled ? message : paySubmit).focus();
      schedule();
    }
  });

  // --- automatic adding credit ---
  const fields = { amount: $("auto-amount"), below: $("auto-below") };

  function showFieldErrors(errors) {
    for (const [name, input] of Object.entries(fields)) {
      const error = $("auto-" + name + "-error");
      const text = (errors && errors[name]) || "";
      error.textContent = text;
      error.hidden = !text;
      if (text) input.setAttribute("aria-invalid", "true"); else input.removeAttribute("aria-invalid");
    }
  }

  async function saveAuto(body, done) {
    const message = $("auto-message");
    say(message, "Saving…");
    generation++;
    changing++;
    try {
      const { status, data } = await send("PUT", "/billing/auto-recharge", body);
      generation++;
      if (status === 200) {
        showFieldErrors(null);
        switchTurnedOnHere = false;
        apply(data);
        if (body.enabled) {
          fields.amount.value = data.auto_recharge.amount;
          fields.below.value = data.auto_recharge.below;
        }
        say(message, done, "success");
        autoSavedOn = Boolean(body.enabled);
      } else if (status === 422 && data.error && data.error.fields) {
        showFieldErrors(data.error.fields);
        say(message, "Check the amounts above.", "error");
        const first = Object.keys(data.error.fields)[0];
        if (fields[first]) fields[first].focus();
      } else if (status === 401 || status === 403) {
        say(message, "Not saved: this page's link no longer works (see the note above).", "error");
      } else {
        showFieldErrors(null);
        say(message, (data.error && data.error.message) || "Could not save.", "error");
      }
    } catch (e) {
      say(message, "No connection. Try again.", "error");
    } finally {
      changing--;
    }
  }

  $("auto-form").addEventListener("submit", (event) => {
    event.preventDefault();
    saveAuto({ enabled: true, amount: fields.amount.value, below: fields.below.value },
             "Saved: automatic adding credit is on.");
  });

  autoSwitch.addEventListener("change", () => {
    if (autoSwitch.checked) {
      switchTurnedOnHere = true;
      say($("auto-message"), "Enter both amounts, then choose Save and Turn On.");
      fields.amount.focus();
    } else {
      switchTurnedOnHere = false;
      showFieldErrors(null);
      saveAuto({ enabled: false }, "Automatic adding credit is off.");
    }
  });

  // "Add credit now" takes the keyboard to the amounts too.
  document.addEventListener("click", (event) => {
    const link = event.target.closest('a[href="#add-credit"]');
    if (!link) return;
    const chosen = document.querySelector('input[name="amount"]:checked');
    if (chosen) setTimeout(() => chosen.focus(), 0);
  });

  for (const el of document.querySelectorAll('[id^="part-"]')) el.dataset.html = el.innerHTML;
  schedule();
})();
