from train.answers import accuracy_by_type, format_accuracy


def test_accuracy_by_type_and_groups():
    recs = [{"type": "shape", "correct": True}, {"type": "shape", "correct": False},
            {"type": "count", "correct": True}, {"type": "closest", "correct": False}]
    acc = accuracy_by_type(recs, {"non_relational": ["shape"], "relational": ["count", "closest"]})
    assert acc == {"acc": 0.5, "acc_closest": 0.0, "acc_count": 1.0, "acc_shape": 0.5,
                   "acc_non_relational": 0.5, "acc_relational": 0.5}
    table = format_accuracy(acc, 10, 4, ["non_relational", "relational"])
    assert table.splitlines()[2].split() == ["all", "0.500"]
    assert table.splitlines()[3].split() == ["non_relational", "0.500"]
