"""Face data: InsightFace RecordIO and verification .bin readers/writers, image folders, synthetic faces."""
