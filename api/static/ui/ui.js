/* Progressive enhancement for the deploy-token pages; every feature here has a plain-HTML fallback. */
(function () {
  "use strict";

  function onReady(callback) {
    if (document.readyState === "loading") {
      document.addEventListener("DOMContentLoaded", callback);
    } else {
      callback();
    }
  }

  // Copy buttons (hidden without JavaScript: the fields are read-only and can be selected by hand).
  function setUpCopyButtons() {
    var status = document.querySelector(".copy-status");
    document.querySelectorAll(".js-copy").forEach(function (button) {
      button.hidden = false;
      button.addEventListener("click", function () {
        var field = document.getElementById(button.getAttribute("data-copy-target"));
        if (!field) {
          return;
        }
        var label = button.textContent.replace(/^Copy /, "");
        function done(ok) {
          if (status) {
            status.textContent = ok ? "Copied the " + label + " to the clipboard." : "Select the field and copy it.";
          }
        }
        if (navigator.clipboard && window.isSecureContext) {
          navigator.clipboard.writeText(field.value).then(function () { done(true); }, function () {
            field.select();
            done(false);
          });
        } else {
          field.select();
          var copied = false;
          try {
            copied = document.execCommand("copy");
          } catch (error) {
            copied = false;
          }
          done(copied);
        }
      });
    });
  }

  // Collapsible settings section, GitLab style ("Collapse" / "Expand"); open without JavaScript.
  function setUpSectionToggles() {
    document.querySelectorAll(".js-settings-toggle").forEach(function (button) {
      var body = document.getElementById(button.getAttribute("aria-controls"));
      if (!body) {
        return;
      }
      button.hidden = false;
      button.addEventListener("click", function () {
        var expanded = button.getAttribute("aria-expanded") === "true";
        button.setAttribute("aria-expanded", expanded ? "false" : "true");
        button.textContent = expanded ? "Expand" : "Collapse";
        body.hidden = expanded;
      });
    });
  }

  // Revoke: a <dialog> asks for confirmation; without JavaScript (or <dialog>) the link opens a confirm page.
  function setUpRevokeDialog() {
    var dialog = document.getElementById("revoke-dialog");
    if (!dialog || typeof dialog.showModal !== "function") {
      return;
    }
    var form = dialog.querySelector(".js-revoke-form");
    var opener = null;
    dialog.querySelector(".js-dialog-cancel").addEventListener("click", function () {
      dialog.close();
    });
    dialog.addEventListener("close", function () {
      if (opener) {
        opener.focus();
      }
    });
    document.querySelectorAll(".js-revoke").forEach(function (link) {
      link.addEventListener("click", function (event) {
        event.preventDefault();
        opener = link;
        form.setAttribute("action", link.getAttribute("href"));
        dialog.querySelectorAll(".js-revoke-name").forEach(function (node) {
          node.textContent = link.getAttribute("data-token-name");
        });
        dialog.showModal();
      });
    });
  }

  // Focus: the new token panel first, else the error summary, so keyboard and screen-reader users land there.
  // After "load": the browser's own scroll to the URL's #fragment comes then and would take the focus back.
  function setUpFocus() {
    var target = document.getElementById("new-deploy-token") || document.getElementById("form-error-summary");
    if (!target) {
      return;
    }
    function focusTarget() {
      window.setTimeout(function () { target.focus(); }, 0);
    }
    if (document.readyState === "complete") {
      focusTarget();
    } else {
      window.addEventListener("load", focusTarget);
    }
  }

  onReady(function () {
    setUpCopyButtons();
    setUpSectionToggles();
    setUpRevokeDialog();
    setUpFocus();
  });
})();
