"""The dialog that asks once for secrets the keyring does not have."""

from __future__ import annotations

import asyncio

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QDialog,
    QDialogButtonBox,
    QFormLayout,
    QLabel,
    QLineEdit,
    QVBoxLayout,
    QWidget,
)

from app.client_bus import shown
from ui.secrets import KEY_LABELS, OPTIONAL_KEYS, validate_secret


class SecretDialog(QDialog):
    def __init__(self, profile: str, keys: list[str], why: str,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        profile = shown(profile, 60)  # the helper's word for it, shown as plain text
        self.setWindowTitle(f"TrustRoam: secrets for {profile}")
        self.setObjectName("secret-dialog")
        self.keys = keys
        lay = QVBoxLayout(self)
        intro = f"The TrustRoam service needs the secrets of profile “{profile}”."
        if why:
            intro += "\n" + why
        label = QLabel(intro)
        label.setTextFormat(Qt.TextFormat.PlainText)
        lay.addWidget(label)
        form = QFormLayout()
        self.fields: dict[str, QLineEdit] = {}
        for k in keys:
            e = QLineEdit()
            e.setObjectName(k)
            e.setEchoMode(QLineEdit.EchoMode.Password)
            if k in OPTIONAL_KEYS:
                e.setPlaceholderText("leave empty if the key file is not encrypted")
            e.textChanged.connect(self._validate)
            form.addRow(KEY_LABELS.get(k, k), e)
            self.fields[k] = e
        lay.addLayout(form)
        self.remember = QCheckBox("Remember in the keyring")
        self.remember.setChecked(not why)
        lay.addWidget(self.remember)
        self.message = QLabel()
        self.message.setObjectName("message")
        lay.addWidget(self.message)
        self.buttons = QDialogButtonBox(QDialogButtonBox.StandardButton.Ok
                                        | QDialogButtonBox.StandardButton.Cancel)
        self.buttons.accepted.connect(self.accept)
        self.buttons.rejected.connect(self.reject)
        lay.addWidget(self.buttons)
        self._validate()

    def _validate(self) -> None:
        problems = [p for k, e in self.fields.items()
                    if (e.text() or k not in OPTIONAL_KEYS)
                    and (p := validate_secret(k, e.text()))]
        self.message.setText(problems[0] if problems else "")
        ok = self.buttons.button(QDialogButtonBox.StandardButton.Ok)
        ok.setEnabled(not problems)

    def answers(self) -> dict[str, str]:
        return {k: e.text() for k, e in self.fields.items()}


async def ask(profile: str, keys: list[str], why: str) -> tuple[dict[str, str], bool]:
    """Show the dialog without a nested event loop (exec() would nest one under qasync)."""
    dlg = SecretDialog(profile, keys, why)
    fut: asyncio.Future[tuple[dict[str, str], bool]] = asyncio.get_running_loop().create_future()

    def done(result: int) -> None:
        if not fut.done():
            if result == QDialog.DialogCode.Accepted:
                fut.set_result((dlg.answers(), dlg.remember.isChecked()))
            else:
                fut.set_result(({}, False))
        for e in dlg.fields.values():
            e.clear()
        dlg.deleteLater()

    dlg.finished.connect(done)
    dlg.show()
    dlg.raise_()
    return await fut
