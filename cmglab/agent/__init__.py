"""The device: a directory that stands in for a Windows machine, and the programs that run on it.

- `dsregcmd`: Entra join / hybrid join / leave / status (Windows' dsregcmd.exe);
- `ccmsetup`: the ConfigMgr client installer (ccmsetup.exe), real command line and exit codes;
- `ccmexec`: the installed client (CcmExec: ClientIDManagerStartup, CcmMessaging, LocationServices,
  PolicyAgent), one cycle or a loop.
"""
