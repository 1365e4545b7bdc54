// Copy buttons for pull commands: shown only when this script runs, so the
// page without JavaScript has just the selectable command.
document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("button.copy")) {
    button.hidden = false;
    button.addEventListener("click", async () => {
      try {
        await navigator.clipboard.writeText(button.dataset.copy);
        button.textContent = "Copied";
      } catch (e) {
        button.textContent = "Select and copy";
      }
    });
  }
});
