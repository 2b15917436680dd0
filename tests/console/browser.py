"""Drives keyrack's admin console in headless Chromium, as an admin would.

Usage: browser.py CONSOLE_URL WORK_DIR SCIM_URL, with the admin token in
KEYRACK_ADMIN_TOKEN. Writes every token the console minted to
WORK_DIR/minted (so the caller can check the server never logged one) and,
when KEYRACK_CONSOLE_SCREENSHOTS names a directory, a PNG of each panel there.
Prints "ok <step>" per step; any failed check exits non-zero.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

URL = sys.argv[1].rstrip("/")
WORK = sys.argv[2]
SCIM = sys.argv[3].rstrip("/")
TOKEN = os.environ["KEYRACK_ADMIN_TOKEN"]
SHOTS = os.environ.get("KEYRACK_CONSOLE_SCREENSHOTS")
minted = []


def step(name):
    print("ok", name, flush=True)


def check(condition, message):
    if not condition:
        raise AssertionError(message)


def shoot(driver, name):
    if SHOTS:
        os.makedirs(SHOTS, exist_ok=True)
        # The whole page, not just the viewport.
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1366, max(800, min(height + 40, 2400)))
        driver.save_screenshot(os.path.join(SHOTS, name + ".png"))
        driver.set_window_size(1366, 800)


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None


def raw(path, cookie, data=None, origin=None):
    """A request outside the browser: (status, headers, body)."""
    request = urllib.request.Request(URL + path, data=data)
    request.add_header("Cookie", "keyrack_session=" + cookie)
    if origin:
        request.add_header("Origin", origin)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(request) as response:
            return response.status, response.headers, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers, error.read().decode()


def provision_person(user_name):
    """Creates a PERSON identity the way an identity provider does: SCIM."""
    body = json.dumps({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": user_name,
        "active": True,
    }).encode()
    request = urllib.request.Request(SCIM + "/Users", data=body, method="POST")
    request.add_header("Authorization", "Bearer " + TOKEN)
    request.add_header("Content-Type", "application/scim+json")
    with urllib.request.urlopen(request) as response:
        check(response.status == 201, "SCIM did not create the person")


def totp_code(seed, not_this=None):
    """The current code from oathtool; a fresh time step if `not_this` was used."""
    deadline = time.time() + 35
    while True:
        code = subprocess.run(
            ["oathtool", "--totp", "-b", seed], capture_output=True, text=True, check=True
        ).stdout.strip()
        if code != not_this:
            return code
        check(time.time() < deadline, "oathtool's code did not change")
        time.sleep(1)


def follow(driver, element):
    """Clicks a link or submit button and waits for the next page."""
    page = driver.find_element(By.TAG_NAME, "html")
    element.click()

    def left_the_document(_):
        # chromedriver sometimes reports a node of the old page as "does not
        # belong to the document" rather than as stale: both mean it is gone.
        try:
            page.is_enabled()
            return False
        except (StaleElementReferenceException, WebDriverException):
            return True

    WebDriverWait(driver, 15).until(left_the_document)


def take_minted(driver, title):
    check(driver.find_element(By.TAG_NAME, "h1").text == title,
          "expected the page %s, got: %s" % (title, driver.find_element(By.TAG_NAME, "main").text))
    warning = driver.find_element(By.CSS_SELECTOR, ".warning").text
    check("will not be shown again" in warning, "no once-only warning: " + warning)
    token = driver.find_element(By.ID, "minted-token").get_attribute("value")
    check(token.startswith("kr_"), "no token shown")
    key_id = driver.find_element(By.CSS_SELECTOR, "label[for=minted-token] code").text
    minted.append(token)
    with open(os.path.join(WORK, "minted"), "a") as out:
        out.write(token + "\n")
    return token, key_id


def main():
    profile = tempfile.mkdtemp(prefix="chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for flag in [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1366,800",
        "--user-data-dir=" + profile,
    ]:
        options.add_argument(flag)
    service = Service(executable_path=shutil.which("chromedriver"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.implicitly_wait(2)
    try:
        run(driver)
    finally:
        driver.quit()


def run(driver):
    # Sign in.
    driver.get(URL + "/identities")
    check(driver.current_url.endswith("/sign-in"), "an anonymous visit did not go to sign-in")
    shoot(driver, "sign-in")
    driver.find_element(By.ID, "token").send_keys("kr_not_a_token")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "main form button"))
    check("not a valid admin token" in driver.page_source, "a wrong token was not refused")
    driver.find_element(By.ID, "token").send_keys(TOKEN)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "main form button"))
    check(driver.current_url.endswith("/identities"), "sign-in did not land on Identities")
    check("Signed in as" in driver.page_source, "no signed-in marker")
    step("sign in")

    cookie = driver.get_cookie("keyrack_session")
    check(cookie is not None, "no session cookie")
    check(cookie["httpOnly"] is True, "the session cookie is not HttpOnly")
    check(cookie["sameSite"] == "Strict", "the session cookie is not SameSite=Strict")
    check("keyrack_session" not in driver.execute_script("return document.cookie"),
          "scripts can read the session cookie")
    session = cookie["value"]
    step("cookie HttpOnly SameSite=Strict")

    status, headers, body = raw("/identities", session)
    policy = headers.get("Content-Security-Policy", "")
    check(status == 200, "the session does not work outside the browser: %d" % status)
    check("script-src 'self'" in policy and "unsafe-inline" not in policy,
          "weak CSP: " + policy)
    check(not driver.find_elements(By.CSS_SELECTOR, "script:not([src]), [style]"),
          "inline script or style on the page")
    step("CSP without unsafe-inline")

    # A change without the session's form token is refused, and changes nothing.
    for form in [b"name=csrf_probe", b"name=csrf_probe&csrf=" + b"0" * 64]:
        status, _, body = raw("/identities", session, form)
        check(status == 403 and "CSRF" in body, "a POST without its CSRF token got %d" % status)
    check("csrf_probe" not in raw("/identities", session)[2], "the refused POST created an identity")
    # Nor may another site sign a browser in (to the attacker's session).
    form = urllib.parse.urlencode({"token": TOKEN}).encode()
    status, headers, _ = raw("/sign-in", "", form, origin="https://attacker.example")
    check(status == 403 and "Set-Cookie" not in headers, "a cross-site sign-in got %d" % status)
    step("POST without CSRF token refused")

    # Create an identity; its token is shown once, with a working Copy button.
    driver.find_element(By.ID, "new-name").send_keys("billing_svc")
    driver.find_element(By.ID, "new-description").send_keys("Billing service")
    driver.find_element(By.ID, "new-scopes").send_keys("invoices:read, invoices:write")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[method=post][action='/identities'] button[type=submit]"))
    first_token, first_key = take_minted(driver, "Identity created")
    driver.execute_cdp_cmd("Browser.grantPermissions", {
        "origin": URL, "permissions": ["clipboardReadWrite", "clipboardSanitizedWrite"]})
    driver.find_element(By.CSS_SELECTOR, "button[data-copy=minted-token]").click()
    # The clipboard write is asynchronous: the label changes when it is done.
    WebDriverWait(driver, 10).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "button[data-copy=minted-token]").text == "Copied",
        "the Copy button did not copy")
    copied = driver.execute_async_script(
        "const done = arguments[0]; navigator.clipboard.readText().then(done, () => done(null));")
    check(copied == first_token, "the clipboard does not hold the token")
    shoot(driver, "token-once")
    follow(driver, driver.find_element(By.LINK_TEXT, "Go to billing_svc"))
    check(first_token not in driver.page_source, "the token was shown a second time")
    check(first_key in driver.page_source, "the identity page does not list its key")
    shoot(driver, "identity-detail")
    driver.get(URL + "/identities")
    check(first_token not in driver.page_source, "the listing shows the token")
    rows = driver.find_elements(By.CSS_SELECTOR, "tr[data-identity=billing_svc]")
    check(len(rows) == 1, "the new identity is not listed")
    check(rows[0].find_elements(By.CSS_SELECTOR, "svg[aria-label=service]"), "no service icon")
    step("create identity, token copied once")

    # Filters.
    driver.get(URL + "/identities?kind=person")
    check(not driver.find_elements(By.CSS_SELECTOR, "tr[data-identity=billing_svc]"),
          "the kind filter kept a service")
    driver.get(URL + "/identities?kind=service&state=active")
    check(driver.find_elements(By.CSS_SELECTOR, "tr[data-identity=billing_svc]"),
          "the filters dropped a matching service")
    step("identity filters")

    # A person from SCIM: no Roll or Disable, and a tooltip says why.
    provision_person("ada.lovelace")
    driver.get(URL + "/identities")
    row = driver.find_element(By.CSS_SELECTOR, "tr[data-identity='ada.lovelace']")
    check(row.find_elements(By.CSS_SELECTOR, "svg[aria-label=person]"), "no person icon")
    check(not row.find_elements(By.LINK_TEXT, "Roll"), "a person can be rolled")
    check(not row.find_elements(By.CSS_SELECTOR, "form[action$='/disable']"), "a person can be disabled")
    reasons = [span.get_attribute("title") for span in row.find_elements(By.CSS_SELECTOR, ".unavailable")]
    check(len(reasons) == 2 and all("identity provider" in reason for reason in reasons),
          "no tooltip on the missing actions: %r" % reasons)
    shoot(driver, "identities")
    step("people have no Roll or Disable")

    # A person's name and description are an admin's to edit; its expiry is
    # the identity provider's, so the form has none.
    follow(driver, row.find_element(By.LINK_TEXT, "ada.lovelace"))
    check(not driver.find_elements(By.ID, "edit-expire"), "a person's edit form offers an expiry")
    description = driver.find_element(By.ID, "edit-description")
    description.clear()
    description.send_keys("Analytical engine")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action$='/edit'] button[type=submit]"))
    check("Analytical engine" in driver.page_source, "the person's description was not saved")
    check("ada.lovelace" in driver.page_source, "the person's name changed")
    step("a person's description edited")

    # Enroll TOTP with the QR code, confirm with oathtool's code.
    driver.get(URL + "/totp")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/totp/enroll'] button"))
    check(driver.find_elements(By.CSS_SELECTOR, "figure.qr svg path"), "no QR code")
    seed = driver.find_element(By.ID, "totp-secret").get_attribute("value")
    shoot(driver, "totp-enrollment")
    used = totp_code(seed)
    driver.find_element(By.ID, "confirm-code").send_keys(used)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/totp/confirm'] button"))
    check("authenticator is confirmed" in driver.page_source, "TOTP was not confirmed")
    step("TOTP enrolled")

    # Roll the key with a grace period and a fresh code.
    driver.get(URL + "/identities")
    row = driver.find_element(By.CSS_SELECTOR, "tr[data-identity=billing_svc]")
    follow(driver, row.find_element(By.LINK_TEXT, "Roll"))
    driver.find_element(By.CSS_SELECTOR, "input[name=old_key_end][value=grace]").click()
    grace = driver.find_element(By.NAME, "grace_period")
    grace.clear()
    grace.send_keys("1h")
    shoot(driver, "roll-dialog")
    driver.find_element(By.ID, "roll-totp").send_keys("000000" if used != "000000" else "111111")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    check("TOTP" in driver.page_source and "Key rolled" not in driver.page_source,
          "a wrong TOTP code rolled the key")
    driver.back()
    driver.find_element(By.CSS_SELECTOR, "input[name=old_key_end][value=grace]").click()
    code_field = driver.find_element(By.ID, "roll-totp")
    code_field.clear()
    roll_code = totp_code(seed, not_this=used)
    code_field.send_keys(roll_code)
    follow(driver, driver.find_element(By.CSS_SELECTOR, "main form button[type=submit]"))
    second_token, second_key = take_minted(driver, "Key rolled")
    check(second_token != first_token and second_key != first_key, "the roll minted nothing new")
    driver.get(URL + "/identities/" + first_key[:12])
    check("rolled to " + second_key in driver.page_source, "the old key is not in grace")
    step("roll with TOTP")

    # Revoke the old key, then find the event in the audit log.
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/keys/%s/revoke'] button" % first_key))
    check(not driver.find_elements(By.CSS_SELECTOR, "form[action='/keys/%s/revoke']" % first_key),
          "the revoked key is still listed")
    driver.get(URL + "/audit?action=RevokeKey&target=" + first_key)
    events = driver.find_elements(By.CSS_SELECTOR, "tr[data-action=RevokeKey]")
    check(len(events) == 1, "the audit log has %d RevokeKey events for the key" % len(events))
    check("OK" in events[0].text, "the revoke's outcome is not OK: " + events[0].text)
    driver.get(URL + "/audit")
    actions = [row.get_attribute("data-action") for row in driver.find_elements(By.CSS_SELECTOR, "tbody tr")]
    for action in ["ConsoleSignIn", "CreateIdentity", "EnrollTotp", "ConfirmTotp", "RollKey", "RevokeKey"]:
        check(action in actions, "no %s event in the audit log" % action)
    shoot(driver, "audit-log")
    step("revoke, then the audit entry")

    # The API Keys panel across the authority: the roll's replacement by its
    # origin, then a batch revoke, previewed first, with a fresh TOTP code.
    driver.get(URL + "/keys?origin=roll")
    listed = [row.get_attribute("data-key-id") for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-key-id]")]
    check(listed == [second_key], "the origin filter lists %r" % listed)
    shoot(driver, "api-keys")
    follow(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "Revoke all matching"))
    previewed = [row.get_attribute("data-key-id") for row in driver.find_elements(By.CSS_SELECTOR, "tr[data-key-id]")]
    check(previewed == [second_key], "the preview lists %r" % previewed)
    shoot(driver, "batch-revoke-preview")
    driver.find_element(By.ID, "batch-totp").send_keys(totp_code(seed, not_this=roll_code))
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/keys/batch-revoke'] button"))
    check("Revoked 1 keys" in driver.page_source, "the batch revoke did not revoke the key")
    driver.get(URL + "/keys?origin=roll")
    check(not driver.find_elements(By.CSS_SELECTOR, "tr[data-key-id]"), "the revoked key is still listed")
    step("API keys panel, batch revoke with preview")

    # The dataset wizard: dataset, identity and key, token shown once.
    driver.get(URL + "/datasets")
    driver.find_element(By.ID, "dataset-name").send_keys("orders")
    driver.find_element(By.ID, "dataset-description").send_keys("Order history")
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form[action='/datasets'] button"))
    take_minted(driver, "Dataset created")
    driver.get(URL + "/datasets")
    check(driver.find_elements(By.CSS_SELECTOR, "tr[data-dataset=orders]"), "the dataset is not listed")
    shoot(driver, "datasets")
    driver.get(URL + "/identities?dataset=orders")
    check(driver.find_elements(By.CSS_SELECTOR, "tr[data-identity=orders]"),
          "the wizard's identity is not filtered by its dataset")
    step("dataset wizard")

    # Sign out: the session is gone from the store, not just from the browser.
    follow(driver, driver.find_element(By.CSS_SELECTOR, "form.sign-out button"))
    check(driver.current_url.endswith("/sign-in"), "sign-out did not land on sign-in")
    check(driver.get_cookie("keyrack_session") is None, "the cookie outlived sign-out")
    status, headers, _ = raw("/identities", session)
    check(status == 303 and headers.get("Location") == "/sign-in",
          "the old session still works after sign-out: %d" % status)
    step("sign out")


if __name__ == "__main__":
    main()
