"""Failures that follow a change, and crashes of other runtimes.

A *change* is a line that reports a deployment or a configuration change: ``Deployed release
v2.4.0``, ``release v2.4.0 activated``, ``current -> releases/v2.4.0``, Kubernetes ``Scaled up
replica set shop-7d9f to 3`` / ``deployment "shop" successfully rolled out``, Helm ``Release
"shop" has been upgraded``, a git commit in a config repository (``config: commit 3f2a1bc``),
``configuration reloaded``, ``SIGHUP received``. When the same incident also shows failures
(HTTP 5xx, exceptions, crashes), the change is the likely cause: ``bad_release`` for a release,
``bad_config`` for a configuration change. Configuration errors that name themselves (nginx
``[emerg] unknown directive``, ``invalid configuration``, pydantic ``validation error for
Settings``, ``config validation failed``) are ``bad_config`` on their own; a release that cannot
even start (``ImagePullBackOff``, ``ErrImagePull``) is ``bad_release`` on its own.

Crashes of other runtimes are ``unhandled_exception``: Go ``panic: runtime error: …``, Java
``Exception in thread "main" java.lang.NullPointerException``, Node.js ``Uncaught TypeError`` /
``TypeError: Cannot read properties of undefined``, Rust ``thread 'main' panicked at``.
"""

from __future__ import annotations

from heald.diagnose.signatures.base import Classification, Rule, register, rule_classifier, rx

_RELEASE = rx(r"\b(?:deploy(?:ed|ing|ment)?|releas(?:ed|ing)|rolled out|rollout|rolling update|activated|"
              r"promoted)\b[^\n]{0,80}?(?:\bv?\d+\.\d+(?:\.\d+)?\b|release|version|image|revision|build)|"
              r"(?:release|version|image) \S+ (?:activated|deployed|is now live|rolled out)|current -> \S*releases?/|"
              r"Scaled up replica set|successfully rolled out|has been upgraded|new (?:release|version|image)")
_CONFIG = rx(r"\bconfig(?:uration)?\b[^\n]{0,60}?\b(?:reload(?:ed)?|changed|updated|applied|commit(?:ted)?|pushed)\b|"
             r"\b(?:reload(?:ed|ing)?|applied|changed)\b[^\n]{0,40}?\bconfig(?:uration)?\b|SIGHUP received|"
             r"\bconfig(?:-repo|uration repo(?:sitory)?)?:? commit [0-9a-f]{7,40}")
_FAILURE = rx(r"\b5\d\d\b|Traceback|Exception|\bError\b|\berror\b|\bfailed\b|\bcrash|panic|fatal|unhealthy|"
              r"CrashLoopBackOff|exited|refused")
_CONFIG_FAILURE = rx(r"config|setting|\.ya?ml|\.toml|\.ini|\.conf|\.json|KeyError|missing (?:key|option)|invalid value")


@register("changes")
def after_change(text: str) -> list[Classification]:
    """``bad_release`` / ``bad_config`` when a change and failures appear together."""
    release, config, failures = [], [], []
    for line in text.splitlines():
        s = line.strip()
        if not s:
            continue
        if _CONFIG.search(s):
            config.append(s)
        elif _RELEASE.search(s):
            release.append(s)
        elif _FAILURE.search(s):
            failures.append(s)
    if not failures:
        return []
    out = []
    if config:
        specific = any(_CONFIG_FAILURE.search(f) for f in failures)
        out.append(Classification("bad_config", 0.86 if specific else 0.8, [*config[:2], *failures[:3]]))
    if release:
        out.append(Classification("bad_release", 0.84, [*release[:2], *failures[:3]]))
    return out


RULES = [
    Rule("bad_config", rx(r"\[emerg\][^\n]*(?:unknown directive|invalid|unexpected|directive is not allowed)|"
                          r"configuration file \S+ test failed|invalid configuration|config(?:uration)? "
                          r"(?:validation|parse|parsing|load(?:ing)?) (?:failed|error)|\d+ validation errors? for \w*"
                          r"(?:Settings|Config)\b|error (?:parsing|loading|reading) (?:the )?config|"
                          r"failed to (?:parse|load|read) (?:the )?config|Configuration error|"
                          r"missing required (?:config|setting|option|environment variable)|"
                          r"KeyError: '[\w.]*(?:url|host|port|dsn|timeout|secret|token|key|path)'"), 0.85),
    Rule("bad_release", rx(r"\bImagePullBackOff\b|\bErrImagePull\b|manifest unknown|pull access denied|"
                           r"Failed to pull image|rollout failed|exceeded its progress deadline|"
                           r"ProgressDeadlineExceeded"), 0.85),
    Rule("unhandled_exception", rx(r"(?:^|\s)panic: |goroutine \d+ \[running\]|Exception in thread \"[^\"]+\" [\w.$]+|"
                                   r"java\.lang\.(?:NullPointerException|IllegalStateException|IllegalArgumentException|"
                                   r"ArrayIndexOutOfBoundsException|ClassCastException)|Uncaught (?:\w+Error|exception)|"
                                   r"TypeError: Cannot read propert(?:y|ies) of (?:undefined|null)|"
                                   r"thread '[^']+' panicked at|unhandled exception|UnhandledPromiseRejection"), 0.72),
]

register("crashes")(rule_classifier(RULES))
