"""The report's plane: each model on the dev split and on XSTest, the target corner and the frontier."""
import xml.etree.ElementTree as ET

from charter.stages.report import pareto_svg

NS = "{http://www.w3.org/2000/svg}"


def rates(harmful, benign):
    return {"refusal_rate": {"harmful": harmful, "benign": benign},
            "full_refusal_rate": {"harmful": harmful, "benign": benign}}


def test_plane_places_models_xstest_target_and_frontier():
    models = {"base": rates(0.1, 0.0), "dpo": rates(0.5, 0.2)}
    xstest = {"base": rates(0.05, 0.02), "dpo": rates(0.9, 0.05)}
    frontier = {"points": {"rl": {"dev": {"harmful_refused": 0.75, "benign_refused": 0.5}}}}
    root = ET.fromstring(pareto_svg(models, xstest, frontier))
    circles = root.findall(f"{NS}circle")
    filled = [c for c in circles if c.get("fill") != "none"]
    open_ = [c for c in circles if c.get("fill") == "none"]
    assert len(filled) == 2 and len(open_) == 2
    # Higher harmful refusal is higher on the page (smaller y); more benign refusal is further left.
    dpo_x = next(c for c in open_ if "dpo" in c.find(f"{NS}title").text)
    base_x = next(c for c in open_ if "base" in c.find(f"{NS}title").text)
    assert float(dpo_x.get("cy")) < float(base_x.get("cy"))
    assert float(filled[1].get("cx")) < float(filled[0].get("cx"))
    target = [r for r in root.findall(f"{NS}rect") if r.find(f"{NS}title") is not None]
    assert len(target) == 1 and "80%" in target[0].find(f"{NS}title").text
    assert [p.find(f"{NS}title").text for p in root.findall(f"{NS}path")] == ["frontier, rl (dev split)"]


def test_plane_without_xstest_or_frontier():
    root = ET.fromstring(pareto_svg({"base": rates(0.1, 0.0)}))
    assert len(root.findall(f"{NS}circle")) == 1 and not root.findall(f"{NS}path")


def test_plane_skips_frontier_points_without_dev_rates():
    frontier = {"points": {"odd": {"xstest": {}}, "none": {"dev": {"harmful_refused": None, "benign_refused": 0.1}}}}
    root = ET.fromstring(pareto_svg({"base": rates(0.1, 0.0)}, None, frontier))
    assert not root.findall(f"{NS}path")
