"""The profile editor: every field, checked as you type; secrets go to the keyring only.

Saving sends the profile (without secrets) to the helper's SaveProfile, which
may make polkit ask for the administrator.  The helper has no method that
returns a saved profile, so the editor keeps this user's copy of what it saved
(``~/.config/trustroam/profiles/<name>.toml``, no secrets) to edit it again.
"""

from __future__ import annotations

import os
from pathlib import Path

from PySide6.QtCore import Qt
from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from app.api import SECRET_MN_HA_KEY
from ui import profile_model as pm
from ui.helper_client import HelperCallError
from ui.secrets import KEY_LABELS, KNOWN_KEYS, KeyringUnavailable, off_loop, validate_secret
from ui.tray_view import TrayView

ERROR_STYLE = "border: 2px solid #c62828;"


def local_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "trustroam" / "profiles"


class ProfileDialog(QWidget):
    def __init__(self, tray: TrayView) -> None:
        super().__init__()
        self.tray = tray
        self.setWindowTitle("TrustRoam profiles")
        self.setObjectName("profile-editor")
        outer = QHBoxLayout(self)
        left = QVBoxLayout()
        self.list = QListWidget()
        # Clicks and Enter, not currentTextChanged: focus alone must not overwrite the form.
        self.list.itemClicked.connect(lambda it: self._select(it.text()))
        self.list.itemActivated.connect(lambda it: self._select(it.text()))
        left.addWidget(self.list)
        new = QPushButton("New")
        new.clicked.connect(lambda: self.load_values(pm.defaults()))
        left.addWidget(new)
        outer.addLayout(left, 1)

        right = QVBoxLayout()
        # Two pages: the Mobile IP side, and the VPN (the [vpn] table, mode mc).
        pages = QTabWidget()
        main_page, vpn_page = QWidget(), QWidget()
        main_form, vpn_form = QFormLayout(main_page), QFormLayout(vpn_page)
        for page_form in (main_form, vpn_form):
            page_form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        pages.addTab(main_page, "Mobile IP")
        pages.addTab(vpn_page, "VPN (untrusted networks)")
        self.pages = pages
        self.widgets: dict[str, QLineEdit | QComboBox | QCheckBox] = {}
        for f in pm.FIELDS:
            w: QLineEdit | QComboBox | QCheckBox
            if f.kind == "choice":
                w = QComboBox()
                w.addItems(list(f.choices))
                w.currentTextChanged.connect(self.revalidate)
            elif f.kind == "bool":
                w = QCheckBox()
                w.toggled.connect(self.revalidate)
            else:
                w = QLineEdit()
                w.textChanged.connect(self.revalidate)
            w.setObjectName(f.key)
            (vpn_form if f.key.startswith("vpn.") else main_form).addRow(f.label, w)
            self.widgets[f.key] = w
        # Secrets: typed here, stored in the keyring on save, never kept in the form.
        # Of the VPN's, only the one its authentication uses is shown (revalidate).
        self.secret_edits: dict[str, QLineEdit] = {}
        self.secret_forms: dict[str, QFormLayout] = {}
        for key in KNOWN_KEYS:
            e = QLineEdit()
            e.setObjectName(key)
            e.setEchoMode(QLineEdit.EchoMode.Password)
            hint = {SECRET_MN_HA_KEY: "hex:… ",
                    "vpn_key_passphrase": "only if the key file is encrypted; "}.get(key, "")
            e.setPlaceholderText(hint + "(empty: keep what the keyring has)")
            e.textChanged.connect(self.revalidate)
            form = main_form if key == SECRET_MN_HA_KEY else vpn_form
            form.addRow(KEY_LABELS[key], e)
            self.secret_forms[key] = form
            self.secret_edits[key] = e
        self.key_edit = self.secret_edits[SECRET_MN_HA_KEY]
        right.addWidget(pages)
        self.message = QLabel()
        self.message.setTextFormat(Qt.TextFormat.PlainText)  # it may quote the helper
        self.message.setObjectName("message")
        self.message.setWordWrap(True)
        right.addWidget(self.message)
        buttons = QHBoxLayout()
        self.import_button = QPushButton("Import…")
        self.import_button.clicked.connect(self._import_dialog)
        self.export_button = QPushButton("Export…")
        self.export_button.clicked.connect(self._export_dialog)
        self.save_button = QPushButton("Save")
        self.save_button.clicked.connect(lambda: self.tray.spawn(self.save()))
        for b in (self.import_button, self.export_button, self.save_button):
            buttons.addWidget(b)
        right.addLayout(buttons)
        outer.addLayout(right, 3)
        self.load_values(pm.defaults())

    # -- values ------------------------------------------------------------------------

    def values(self) -> dict[str, str]:
        out = {}
        for k, w in self.widgets.items():
            if isinstance(w, QComboBox):
                out[k] = w.currentText()
            elif isinstance(w, QCheckBox):
                out[k] = "true" if w.isChecked() else "false"
            else:
                out[k] = w.text()
        return out

    def load_values(self, values: dict[str, str]) -> None:
        for k, w in self.widgets.items():
            v = values.get(k, pm.BY_KEY[k].default)
            if isinstance(w, QComboBox):
                w.setCurrentText(v)
            elif isinstance(w, QCheckBox):
                w.setChecked(v.lower() == "true")
            else:
                w.setText(v)
        for e in self.secret_edits.values():
            e.clear()
        self.revalidate()

    def wanted_secrets(self, values: dict[str, str] | None = None) -> list[str]:
        """The MN-HA key and the VPN secret this profile's authentication uses."""
        vpn = pm.vpn_secret(self.values() if values is None else values)
        return [SECRET_MN_HA_KEY, *([vpn] if vpn else [])]

    def revalidate(self) -> dict[str, str]:
        values = self.values()
        errs = pm.validate(values)
        wanted = self.wanted_secrets(values)
        for key, e in self.secret_edits.items():
            self.secret_forms[key].setRowVisible(e, key in wanted)
            if key in wanted and e.text() and (msg := validate_secret(key, e.text())):
                errs[key] = msg
        for k, w in [*self.widgets.items(), *self.secret_edits.items()]:
            w.setStyleSheet(ERROR_STYLE if k in errs else "")
        self.message.setText(next(iter(errs.values()), ""))
        self.message.setStyleSheet("color: #c62828;" if errs else "")
        self.save_button.setEnabled(not errs)
        self.export_button.setEnabled(not errs)
        return errs

    # -- list ----------------------------------------------------------------------------

    def present(self) -> None:
        current = self.list.currentItem().text() if self.list.currentItem() else ""
        self.list.clear()
        self.list.addItems(self.tray.profiles)
        found = self.list.findItems(current, Qt.MatchFlag.MatchExactly) if current else []
        if found:
            self.list.setCurrentItem(found[0])
        self.show()
        self.raise_()
        self.activateWindow()

    def _select(self, name: str) -> None:
        if not name:
            return
        path = local_dir() / f"{name}.toml"
        try:
            values = pm.from_toml(path.read_text(encoding="utf-8"), str(path))
        except (OSError, pm.ProfileFileError):
            values = {**pm.defaults(), "name": name}
            self.load_values(values)
            self.message.setText(f"{name}: saved by the service; this computer has no copy "
                                 "of its fields: fill them in or import its file")
            return
        self.load_values(values)

    # -- import / export ----------------------------------------------------------------

    def import_file(self, path: Path) -> bool:
        try:
            values = pm.from_toml(path.read_text(encoding="utf-8"), str(path))
        except OSError as exc:
            self.message.setText(f"{path}: cannot read: {exc.strerror}")
            return False
        except UnicodeDecodeError:
            self.message.setText(f"{path}: not a text file")
            return False
        except pm.ProfileFileError as exc:
            self.message.setText(str(exc))
            return False
        self.load_values(values)
        return True

    def export_file(self, path: Path) -> bool:
        if self.revalidate():
            return False
        try:
            path.write_text(pm.to_toml(self.values()), encoding="utf-8")
        except OSError as exc:
            self.message.setText(f"{path}: cannot write: {exc.strerror}")
            return False
        self.message.setText(f"Exported to {path} (without secrets)")
        return True

    def _file_dialog(self, save: bool) -> QFileDialog:
        # open(), not exec(): a nested event loop would stall qasync.
        d = QFileDialog(self, "Export profile" if save else "Import profile")
        d.setNameFilter("TrustRoam profiles (*.toml)")
        if save:
            d.setAcceptMode(QFileDialog.AcceptMode.AcceptSave)
            d.setDefaultSuffix("toml")
        return d

    def _import_dialog(self) -> None:
        d = self._file_dialog(False)
        d.fileSelected.connect(lambda p: self.import_file(Path(p)))
        d.open()

    def _export_dialog(self) -> None:
        d = self._file_dialog(True)
        d.fileSelected.connect(lambda p: self.export_file(Path(p)))
        d.open()

    # -- save -------------------------------------------------------------------------

    async def save(self) -> bool:
        if self.revalidate():
            return False
        helper = self.tray.helper
        if helper is None or helper.owner is None:
            self.message.setText("Not saved: TrustRoam service not running")
            return False
        text = pm.to_toml(self.values())
        self.save_button.setEnabled(False)
        try:
            name = await helper.save_profile(text)
        except HelperCallError as exc:
            self.message.setText(f"Not saved: {exc}")
            return False
        finally:
            self.save_button.setEnabled(True)
        try:
            d = local_dir()
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{name}.toml").write_text(text, encoding="utf-8")
        except OSError as exc:
            self.message.setText(f"Saved {name}; this computer's copy failed: {exc.strerror}")
        stored = []
        wanted = self.wanted_secrets()
        for key, e in self.secret_edits.items():
            if not e.text() or key not in wanted:
                continue
            try:
                await off_loop(self.tray.store.set, name, key, e.text())
            except KeyringUnavailable as exc:
                self.message.setText(f"Saved {name}, but its secrets were not stored: {exc}")
                return False
            e.clear()
            stored.append(KEY_LABELS[key].split(" (")[0])
        self.message.setText(f"Saved {name}" + (f"; in the keyring: {', '.join(stored)}"
                                                if stored else ""))
        return True
