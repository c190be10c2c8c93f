"""Helpers (no tests): tiny hand-made MIMIC-III-shaped raw tables and aux files for the ingest tests.

Patients (subject_id):
- 1: two admissions whose HADM_ID order (11 < 12) is the reverse of their time order (12 first);
  diagnosis 3893 and procedure 3893 share a code string.
- 2: one admission (a cold-start patient).
- 3: two admissions; 32 has no procedure (dropped by the inner join). DOB 300 years earlier (age cap).
- 4: one admission with no prescription (dropped).
- 5: one admission whose only NDCs are "0" and an unmapped one (dropped: no medication mapped).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

PATIENTS = [
    (1, "F", "2100-01-01 00:00:00"),
    (2, "M", "2090-06-15 00:00:00"),
    (3, "F", "1850-01-01 00:00:00"),
    (4, "M", "2100-01-01 00:00:00"),
    (5, "F", "2100-01-01 00:00:00"),
]
ADMISSIONS = [  # subject, hadm, admittime, type, insurance, language, marital, ethnicity
    (1, 11, "2160-06-01 10:00:00", "EMERGENCY", "Medicare", "ENGL", "MARRIED", "WHITE"),
    (1, 12, "2160-01-01 10:00:00", "ELECTIVE", "Medicare", "ENGL", "MARRIED", "WHITE"),
    (2, 21, "2150-03-01 08:00:00", "EMERGENCY", "Private", "", "SINGLE", "BLACK/AFRICAN AMERICAN"),
    (3, 31, "2150-01-01 08:00:00", "URGENT", "Medicaid", "SPAN", "", "HISPANIC OR LATINO"),
    (3, 32, "2151-01-01 08:00:00", "URGENT", "Medicaid", "SPAN", "", "HISPANIC OR LATINO"),
    (4, 41, "2150-01-01 08:00:00", "EMERGENCY", "Private", "ENGL", "SINGLE", "WHITE"),
    (5, 51, "2150-01-01 08:00:00", "EMERGENCY", "Private", "ENGL", "SINGLE", "WHITE"),
]
DIAGNOSES = [  # subject, hadm, code, SEQ_NUM (file order is not SEQ_NUM order)
    (1, 11, "3893", 2),
    (1, 11, "4019", 1),  # the principal diagnosis of 11, listed second in the file
    (1, 12, "4019", 1),
    (2, 21, "4019", 2),
    (2, 21, "25000", 1),
    (2, 21, "4019", 3),  # listed twice: keeps its first position (SEQ_NUM 2)
    (3, 31, "42731", 1),
    (3, 32, "42731", 1),
    (4, 41, "4019", 1),
    (5, 51, "4019", 1),
]
PROCEDURES = [
    (1, 11, "3893"),
    (1, 12, "9604"),
    (2, 21, "3893"),
    (3, 31, "9604"),
    (4, 41, "3893"),
    (5, 51, "3893"),
]
# NDCs: ...01 -> R1 -> N02BE (N02B); ...02 -> R2 -> {C10AA, B01AC} (first sorted: B01A);
# ...03 -> no RXCUI, direct table -> C07A; "0" -> missing; 99999999999 -> unmapped
PRESCRIPTIONS = [
    (1, 11, "00000000001"),
    (1, 11, "00000000002"),
    (1, 12, "00000000001"),
    (1, 12, "00000000003"),
    (2, 21, "00000000002"),
    (2, 21, "00000000001"),
    (3, 31, "00000000001"),
    (3, 32, "00000000002"),
    (5, 51, "0"),
    (5, 51, "99999999999"),
]


def write_raw(raw: Path, upper: bool = True, gz: bool = False) -> Path:
    raw.mkdir(parents=True, exist_ok=True)

    def save(name: str, df: pd.DataFrame) -> None:
        df = df.rename(columns=str.upper if upper else str.lower)
        fname = (name if upper else name.lower()) + (".csv.gz" if gz else ".csv")
        df.to_csv(raw / fname, index=False)

    save(
        "PATIENTS",
        pd.DataFrame(
            [(i, s, g, d, "", "", "", 0) for i, (s, g, d) in enumerate(PATIENTS)],
            columns=[
                "ROW_ID",
                "SUBJECT_ID",
                "GENDER",
                "DOB",
                "DOD",
                "DOD_HOSP",
                "DOD_SSN",
                "EXPIRE_FLAG",
            ],
        ),
    )
    save(
        "ADMISSIONS",
        pd.DataFrame(
            [
                (i, s, h, t, "", "", at, "", "", ins, lang, "", mar, eth, "", "", "", 0, 1)
                for i, (s, h, t, at, ins, lang, mar, eth) in enumerate(ADMISSIONS)
            ],
            columns=[
                "ROW_ID",
                "SUBJECT_ID",
                "HADM_ID",
                "ADMITTIME",
                "DISCHTIME",
                "DEATHTIME",
                "ADMISSION_TYPE",
                "ADMISSION_LOCATION",
                "DISCHARGE_LOCATION",
                "INSURANCE",
                "LANGUAGE",
                "RELIGION",
                "MARITAL_STATUS",
                "ETHNICITY",
                "EDREGTIME",
                "EDOUTTIME",
                "DIAGNOSIS",
                "HOSPITAL_EXPIRE_FLAG",
                "HAS_CHARTEVENTS_DATA",
            ],
        ),
    )
    for name, rows in (("DIAGNOSES_ICD", DIAGNOSES), ("PROCEDURES_ICD", PROCEDURES)):
        save(
            name,
            pd.DataFrame(
                [
                    (i, *row[:2], row[3] if len(row) > 3 else 1, row[2])
                    for i, row in enumerate(rows)
                ],
                columns=["ROW_ID", "SUBJECT_ID", "HADM_ID", "SEQ_NUM", "ICD9_CODE"],
            ),
        )
    save(
        "PRESCRIPTIONS",
        pd.DataFrame(
            [
                (
                    i,
                    s,
                    h,
                    "",
                    "2160-01-01 00:00:00",
                    "",
                    "MAIN",
                    f"drug{n[-1]}",
                    "",
                    "",
                    "",
                    "",
                    n,
                    "",
                    "1",
                    "mg",
                    "1",
                    "TAB",
                    "PO",
                )
                for i, (s, h, n) in enumerate(PRESCRIPTIONS)
            ],
            columns=[
                "ROW_ID",
                "SUBJECT_ID",
                "HADM_ID",
                "ICUSTAY_ID",
                "STARTDATE",
                "ENDDATE",
                "DRUG_TYPE",
                "DRUG",
                "DRUG_NAME_POE",
                "DRUG_NAME_GENERIC",
                "FORMULARY_DRUG_CD",
                "GSN",
                "NDC",
                "PROD_STRENGTH",
                "DOSE_VAL_RX",
                "DOSE_UNIT_RX",
                "FORM_VAL_DISP",
                "FORM_UNIT_DISP",
                "ROUTE",
            ],
        ),
    )
    save(
        "D_ICD_DIAGNOSES",
        pd.DataFrame(
            [
                (1, "3893", "Dx 3893 short", "Dx 3893 long"),
                (2, "4019", "Hypertension NOS", "Unspecified essential hypertension"),
                (3, "25000", "DMII", "Diabetes"),
                (4, "42731", "Atrial fibrillation", "Atrial fibrillation long"),
            ],
            columns=["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
        ),
    )
    save(
        "D_ICD_PROCEDURES",
        pd.DataFrame(
            [
                (1, "3893", "Venous cath NEC", "Venous catheterization"),
                (2, "9604", "Insert endotracheal tube", "Insertion"),
            ],
            columns=["ROW_ID", "ICD9_CODE", "SHORT_TITLE", "LONG_TITLE"],
        ),
    )
    return raw


def write_aux(aux: Path) -> Path:
    (aux / "gamenet").mkdir(
        parents=True, exist_ok=True
    )  # a sub-folder: files are found recursively
    (aux / "gamenet" / "ndc2rxnorm_mapping.txt").write_text(
        "{'00000000001': u'R1', '00000000002': u'R2', '55555555555': u'R9'}"
    )
    pd.DataFrame(
        {
            "YEAR": [2018] * 4,
            "MONTH": [1] * 4,
            "NDC": ["x"] * 4,
            "RXCUI": ["R1", "R2", "R2", "R9"],
            "ATC4": ["N02BE", "C10AA", "B01AC", "A01AB"],
        }
    ).to_csv(aux / "RXCUI2atc4.csv", index=False)
    pd.DataFrame({"ndc": ["00000000003"], "atc3": ["C07A"]}).to_csv(
        aux / "ndc2atc3.csv", index=False
    )
    pd.DataFrame(
        {
            "atc_code": ["N", "N02", "N02B", "B01A", "C07A", "C10A", "N02BE"],
            "atc_name": [
                "NERVOUS",
                "ANALGESICS",
                "OTHER ANALGESICS AND ANTIPYRETICS",
                "ANTITHROMBOTIC AGENTS",
                "BETA BLOCKING AGENTS",
                "LIPID MODIFYING AGENTS, PLAIN",
                "Anilides",
            ],
            "ddd": "NA",
            "uom": "NA",
            "adm_r": "NA",
            "note": "NA",
        }
    ).to_csv(aux / "WHO ATC-DDD 2021-12-03.csv", index=False)
    pd.DataFrame({"atc3_a": ["N02B", "C07A"], "atc3_b": ["B01A", "Z99Z"]}).to_csv(
        aux / "ddi_pairs_atc3.csv", index=False
    )
    return aux


INGEST = {
    "aux_files": {"ndc2atc3": "ndc2atc3.csv"},
    "split": {"method": "random", "ratios": [0.8, 0.1, 0.1]},
}
