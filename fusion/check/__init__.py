"""``fusion check``: judge a converter's fused result.

``check`` judges the whole converted model, then every site inside it (``whole``); ``check_sites`` cuts each
site out and converts it alone (``sites``). ``verdicts`` holds what they find, ``explain`` why a site is wrong,
``tolerance`` which error model an output is within.
"""

from fusion.check.explain import BIAS_MISSING, LEGACY, Code, judge_params, expectation
from fusion.check.sites import check_sites, judge_site
from fusion.check.verdicts import FirstWrong, ModelReport, SiteVerdict, TensorCheck, WholeModel
from fusion.check.whole import check

__all__ = ["BIAS_MISSING", "LEGACY", "Code", "FirstWrong", "ModelReport", "SiteVerdict", "TensorCheck", "WholeModel",
           "check", "check_sites", "judge_params", "judge_site", "expectation"]
