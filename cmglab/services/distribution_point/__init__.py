"""The distribution point (DP): the site's content as IIS serves it (SMS_DP_SMSPKG$, SMS_DP_SMSSIG$,
NOCERT_SMS_DP_SMSPKG$, the content library's Datalib), anonymous or with Windows authentication."""
