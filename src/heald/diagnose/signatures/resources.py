"""Resource exhaustion and process death in log lines: OOM kills, disk full, permission denied,
processes that exited.

Formats recognised (each a real message of the named program):
- Linux kernel (dmesg / journal): ``Out of memory: Killed process 4321 (python3) total-vm:…``,
  ``Memory cgroup out of memory: Killed process …``, ``python3 invoked oom-killer:
  gfp_mask=…``, ``oom-kill:constraint=CONSTRAINT_MEMCG,…``, ``oom_reaper: reaped process``;
- systemd: ``shop.service: A process of this unit has been killed by the OOM killer.``,
  ``shop.service: Failed with result 'oom-kill'.``, ``Main process exited, code=killed,
  status=9/KILL``, ``Failed with result 'exit-code'``;
- Kubernetes: ``Reason: OOMKilled``, ``Last State: Terminated … Exit Code: 137``,
  ``Back-off restarting failed container``, ``CrashLoopBackOff``, kubelet eviction ``The node
  was low on resource: ephemeral-storage`` / ``memory``;
- runtimes: Java ``java.lang.OutOfMemoryError``, Node.js ``FATAL ERROR: … JavaScript heap out
  of memory``, Go ``fatal error: runtime: out of memory``, libc ``Cannot allocate memory``;
- filesystems: ``No space left on device`` (ENOSPC, errno 28), ``Disk quota exceeded`` (EDQUOT,
  errno 122), PostgreSQL ``could not extend file "base/…": No space left on device``, ``disk
  usage 97% above quota``;
- supervisors: supervisord ``exited: shop (exit status 1; not expected)``, heald's probe
  ``process_state=exited`` / ``killed by SIGKILL``;
- permissions: ``[Errno 13] Permission denied``, ``EACCES``, ``Operation not permitted``.
"""

from __future__ import annotations

from heald.diagnose.signatures.base import Rule, register, rule_classifier, rx

RULES = [
    # out of memory
    Rule("out_of_memory", rx(r"Out of memory: Kill(?:ed)? process (?P<pid>\d+) \((?P<process>[^)]+)\)|"
                             r"Memory cgroup out of memory|invoked oom-killer|oom-kill(?:er)?\b|oom_reaper|"
                             r"killed by the OOM killer|result 'oom-kill'|\bOOMKilled\b|\bOOM[- ]?killed\b"),
         0.93, ("process",)),
    Rule("out_of_memory", rx(r"java\.lang\.OutOfMemoryError|JavaScript heap out of memory|"
                             r"runtime: out of memory|\bMemoryError\b|Cannot allocate memory|\bENOMEM\b|"
                             r"std::bad_alloc|memory allocation of \d+ bytes failed"), 0.9),
    Rule("out_of_memory", rx(r"(?:resident|rss|memory)[\w ]*(?:usage)?[^\n]{0,40}?(?:above|exceeds?|over|>)[^\n]{0,30}"
                             r"(?:limit|threshold|quota|budget)|memory (?:limit|usage) (?:exceeded|reached)|"
                             r"low on resource: memory|MemoryPressure|memory leak"), 0.8),
    Rule("out_of_memory", rx(r"exit(?:ed)?(?: with)?(?: code| status)?[ :=]+137\b"), 0.6),
    # disk full
    Rule("disk_full", rx(r"No space left on device|\bENOSPC\b|\[Errno 28\]|Disk quota exceeded|\bEDQUOT\b|"
                         r"\[Errno 122\]|could not extend file|could not write to file .*No space"), 0.94),
    Rule("disk_full", rx(r"(?:disk|filesystem|volume|partition|inodes?)\b[^\n]{0,60}?(?:full|out of space|"
                         r"almost out of|filling up|(?:above|exceeds?|over)[^\n]{0,30}(?:quota|limit|threshold))|"
                         r"low on resource: ephemeral-storage|\bDiskPressure\b|disk usage (?:is )?(?:at )?9\d(?:\.\d+)?\s?%"),
         0.85),
    # permission denied
    Rule("permission_denied", rx(r"\[Errno 13\] Permission denied|\bEACCES\b|\[Errno 1\] Operation not permitted|"
                                 r"\bEPERM\b|permission denied"), 0.82),
    # the process is gone
    Rule("process_down", rx(r"process_state=exited|Main process exited, code=(?:killed|exited)|"
                            r"Failed with result '(?:exit-code|signal|core-dump)'|CrashLoopBackOff|"
                            r"Back-off restarting failed container|exited: \S+ \(exit status \d+; not expected\)|"
                            r"entered FATAL state, too many start retries|"
                            r"\bkilled by SIG[A-Z]+\b|\bsegmentation fault\b|core dumped|"
                            r"\bprocess (?:has )?(?:exited|died|crashed|is not running)\b"), 0.8),
    Rule("process_down", rx(r"\bexited with (?:code|status) [1-9]\d*|terminated by signal"), 0.7),
]

register("resources")(rule_classifier(RULES))
