"""The portals' forms (WTForms via Flask-WTF).  The rules are those of ``validation.py``; each error
is shown next to its field, and a form with errors comes back with everything the user typed, except
passwords and pasted private keys.

The forms carry no CSRF field of their own: ``portal.py`` checks the token of every POST in one place
(Flask-WTF's CSRFProtect), the forms with no other field included.
"""

from __future__ import annotations

from typing import Any

from flask import current_app
from flask_wtf import FlaskForm  # type: ignore[import-untyped]  # no type information shipped
from wtforms import BooleanField, Field, PasswordField, StringField
from wtforms.validators import StopValidation

from medmgr_web import validation as v


def _strip(value: Any) -> Any:
    return value.strip() if isinstance(value, str) else value


class PortalForm(FlaskForm):  # type: ignore[misc]
    class Meta:
        csrf = False  # checked for every POST by CSRFProtect (portal.py)

    def field_errors(self) -> dict[str, list[str]]:
        return {f.name: list(f.errors) for f in self if f.errors}


def _text(**kw: Any) -> StringField:
    return StringField(default="", filters=[_strip], **kw)


def _name(what: str) -> StringField:
    return _text(validators=[v.Check(lambda value: v.check_name(value, what))])


class PublicKeyField(StringField):
    """A pasted public key (PEM, certificate or OpenSSH line); ``parsed`` holds (DER SPKI, keyid)."""

    parsed: tuple[bytes, bytes] | None = None

    def pre_validate(self, form: Any) -> None:
        self.parsed, error = v.parse_public_key(str(self.data or ""))
        if error:
            if v.is_private_key(str(self.data or "")):
                self.data = ""  # never sent back to the browser
            raise StopValidation(error)


def _public_key() -> PublicKeyField:
    return PublicKeyField(default="", filters=[_strip])


def _password() -> PasswordField:
    return PasswordField(default="")


def _new_password_check(form: Any, field: Field) -> None:
    min_length = int(current_app.config.get("PASSWORD_MIN_LENGTH", 8))
    if error := v.check_new_password(str(field.data or ""), str(form.confirm_password.data or ""), min_length):
        raise StopValidation(error)


# -- server manager ---------------------------------------------------------------------------------


class LoginForm(PortalForm):
    login = _text()
    password = _password()


class RegisterForm(PortalForm):
    new_login = _name("Username")
    new_password = PasswordField(default="", validators=[_new_password_check])
    confirm_password = _password()


class AccountForm(PortalForm):
    new_login = _name("Username")
    old_password = _password()
    new_password = _password()
    confirm_password = _password()

    def validate_new_password(self, field: Field) -> None:
        if field.data or self.confirm_password.data:  # empty: keep the password
            _new_password_check(self, field)


class DeleteAccountForm(PortalForm):
    password = _password()


class PeerForm(PortalForm):
    alias = _name("Alias")
    public_key = _public_key()


class AccessForm(PortalForm):
    scope = _text()
    add_keyids = _text()

    def validate_scope(self, field: Field) -> None:
        if field.data not in ("all", "listed"):
            raise StopValidation("Choose who this peer may reach.")


# -- client manager ---------------------------------------------------------------------------------


class AdminLoginForm(PortalForm):
    password = _password()


class KeyForm(PortalForm):
    replace = _text()


class ServerForm(PortalForm):
    address = _text(validators=[v.Check(v.check_host)])
    port = _text(validators=[v.Check(lambda value: v.parse_port(value or "500")[1])])
    public_key = _public_key()


class ConnectionForm(PortalForm):
    alias = _name("Alias")
    public_key = _public_key()
    local_subnet = _text(validators=[v.Check(lambda value: v.parse_subnet(value, "Local subnet")[1])])
    remote_subnet = _text(validators=[v.Check(lambda value: v.parse_subnet(value, "Remote subnet")[1])])
    active = BooleanField(default=True, false_values=("", "false", "no", "0"))
