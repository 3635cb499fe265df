// "Copy" buttons: <button data-copy="ID"> copies the value of element ID and
// says so in the polite live region #copy-status (screen readers hear it).

async function writeClipboard(text, source) {
  if (navigator.clipboard && window.isSecureContext) {
    try {
      await navigator.clipboard.writeText(text);
      return true;
    } catch {
      // Permission refused: fall back to selecting the text.
    }
  }
  // Plain-HTTP deployments have no Clipboard API; the old command still works
  // on a selected field.
  source.focus();
  source.select();
  try {
    return document.execCommand('copy');
  } catch {
    return false;
  }
}

export function setUpCopyButtons(root = document) {
  const status = root.getElementById('copy-status');
  for (const button of root.querySelectorAll('button[data-copy]')) {
    button.addEventListener('click', async () => {
      const source = root.getElementById(button.dataset.copy);
      if (!source || !source.value) return;
      const ok = await writeClipboard(source.value, source);
      const label = button.dataset.label || 'Text';
      if (status) status.textContent = ok ? `${label} copied.` : 'Copy failed: select the text and copy it.';
      if (ok) {
        button.textContent = 'Copied';
        button.classList.add('copied');
        setTimeout(() => {
          button.textContent = 'Copy';
          button.classList.remove('copied');
        }, 2000);
      }
    });
  }
}
