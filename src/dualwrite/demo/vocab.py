"""Word lists the demo seed draws from: places, people, companies, products. Pure data.

Every list is a tuple so that iteration order, and therefore the seeded data, is fixed.
Coordinates are rounded city centres; postcodes are the city's central range.
"""

from __future__ import annotations

from typing import NamedTuple


class City(NamedTuple):
    name: str
    state: str
    zipcode: str
    latitude: float
    longitude: float
    dial: str


US_CITIES: tuple[City, ...] = (
    City("Seattle", "WA", "98101", 47.6062, -122.3321, "206"),
    City("Redmond", "WA", "98052", 47.6740, -122.1215, "425"),
    City("Portland", "OR", "97201", 45.5152, -122.6784, "503"),
    City("San Francisco", "CA", "94105", 37.7749, -122.4194, "415"),
    City("Los Angeles", "CA", "90012", 34.0522, -118.2437, "213"),
    City("San Diego", "CA", "92101", 32.7157, -117.1611, "619"),
    City("Phoenix", "AZ", "85004", 33.4484, -112.0740, "602"),
    City("Denver", "CO", "80202", 39.7392, -104.9903, "303"),
    City("Salt Lake City", "UT", "84101", 40.7608, -111.8910, "801"),
    City("Dallas", "TX", "75201", 32.7767, -96.7970, "214"),
    City("Austin", "TX", "78701", 30.2672, -97.7431, "512"),
    City("Houston", "TX", "77002", 29.7604, -95.3698, "713"),
    City("Kansas City", "MO", "64105", 39.0997, -94.5786, "816"),
    City("St. Louis", "MO", "63101", 38.6270, -90.1994, "314"),
    City("Chicago", "IL", "60601", 41.8781, -87.6298, "312"),
    City("Milwaukee", "WI", "53202", 43.0389, -87.9065, "414"),
    City("Minneapolis", "MN", "55401", 44.9778, -93.2650, "612"),
    City("Detroit", "MI", "48226", 42.3314, -83.0458, "313"),
    City("Columbus", "OH", "43215", 39.9612, -82.9988, "614"),
    City("Pittsburgh", "PA", "15222", 40.4406, -79.9959, "412"),
    City("Philadelphia", "PA", "19103", 39.9526, -75.1652, "215"),
    City("New York", "NY", "10001", 40.7128, -74.0060, "212"),
    City("Boston", "MA", "02108", 42.3601, -71.0589, "617"),
    City("Washington", "DC", "20001", 38.9072, -77.0369, "202"),
    City("Charlotte", "NC", "28202", 35.2271, -80.8431, "704"),
    City("Raleigh", "NC", "27601", 35.7796, -78.6382, "919"),
    City("Nashville", "TN", "37203", 36.1627, -86.7816, "615"),
    City("Atlanta", "GA", "30303", 33.7490, -84.3880, "404"),
    City("Orlando", "FL", "32801", 28.5383, -81.3792, "407"),
    City("Miami", "FL", "33131", 25.7617, -80.1918, "305"),
)

DE_CITIES: tuple[City, ...] = (
    City("Berlin", "BE", "10115", 52.5200, 13.4050, "30"),
    City("Hamburg", "HH", "20095", 53.5511, 9.9937, "40"),
    City("München", "BY", "80331", 48.1351, 11.5820, "89"),
    City("Köln", "NW", "50667", 50.9375, 6.9603, "221"),
    City("Frankfurt am Main", "HE", "60311", 50.1109, 8.6821, "69"),
    City("Stuttgart", "BW", "70173", 48.7758, 9.1829, "711"),
    City("Düsseldorf", "NW", "40213", 51.2277, 6.7735, "211"),
    City("Leipzig", "SN", "04109", 51.3397, 12.3731, "341"),
    City("Dortmund", "NW", "44135", 51.5136, 7.4653, "231"),
    City("Essen", "NW", "45127", 51.4556, 7.0116, "201"),
    City("Bremen", "HB", "28195", 53.0793, 8.8017, "421"),
    City("Dresden", "SN", "01067", 51.0504, 13.7373, "351"),
    City("Hannover", "NI", "30159", 52.3759, 9.7320, "511"),
    City("Nürnberg", "BY", "90402", 49.4521, 11.0767, "911"),
    City("Mannheim", "BW", "68159", 49.4875, 8.4660, "621"),
    City("Karlsruhe", "BW", "76133", 49.0069, 8.4037, "721"),
    City("Augsburg", "BY", "86150", 48.3705, 10.8978, "821"),
    City("Münster", "NW", "48143", 51.9607, 7.6261, "251"),
    City("Freiburg im Breisgau", "BW", "79098", 47.9990, 7.8421, "761"),
    City("Kiel", "SH", "24103", 54.3233, 10.1228, "431"),
)

US_STREETS: tuple[str, ...] = (
    "Main St", "Oak Ave", "Pine St", "Maple Ave", "Cedar Rd", "Elm St", "Washington Blvd",
    "Lake Dr", "Hill Rd", "Park Ave", "Commerce Way", "Industrial Pkwy", "Market St",
    "2nd Ave", "5th St", "Broadway", "River Rd", "Airport Rd", "Technology Dr", "Harbor Blvd",
)

DE_STREETS: tuple[str, ...] = (
    "Hauptstraße", "Bahnhofstraße", "Gartenstraße", "Schulstraße", "Industriestraße",
    "Lindenstraße", "Goethestraße", "Friedrichstraße", "Kirchweg", "Am Markt",
    "Berliner Allee", "Rheinstraße", "Marktplatz", "Parkweg", "Wiesenweg", "Hafenstraße",
)

#: (first name, FO gender enum name)
US_FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("James", "Male"), ("Mary", "Female"), ("Robert", "Male"), ("Patricia", "Female"),
    ("John", "Male"), ("Jennifer", "Female"), ("Michael", "Male"), ("Linda", "Female"),
    ("David", "Male"), ("Elizabeth", "Female"), ("William", "Male"), ("Barbara", "Female"),
    ("Richard", "Male"), ("Susan", "Female"), ("Joseph", "Male"), ("Jessica", "Female"),
    ("Thomas", "Male"), ("Sarah", "Female"), ("Christopher", "Male"), ("Karen", "Female"),
    ("Daniel", "Male"), ("Lisa", "Female"), ("Matthew", "Male"), ("Nancy", "Female"),
    ("Anthony", "Male"), ("Sandra", "Female"), ("Mark", "Male"), ("Ashley", "Female"),
    ("Steven", "Male"), ("Emily", "Female"), ("Andrew", "Male"), ("Michelle", "Female"),
    ("Kevin", "Male"), ("Amanda", "Female"), ("Brian", "Male"), ("Melissa", "Female"),
)

US_LAST_NAMES: tuple[str, ...] = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts",
)

DE_FIRST_NAMES: tuple[tuple[str, str], ...] = (
    ("Lukas", "Male"), ("Anna", "Female"), ("Maximilian", "Male"), ("Sophie", "Female"),
    ("Felix", "Male"), ("Marie", "Female"), ("Jonas", "Male"), ("Laura", "Female"),
    ("Leon", "Male"), ("Lena", "Female"), ("Paul", "Male"), ("Julia", "Female"),
    ("Finn", "Male"), ("Hannah", "Female"), ("Jan", "Male"), ("Katharina", "Female"),
    ("Tobias", "Male"), ("Sarah", "Female"), ("Florian", "Male"), ("Lisa", "Female"),
    ("Stefan", "Male"), ("Sabine", "Female"), ("Thomas", "Male"), ("Petra", "Female"),
    ("Michael", "Male"), ("Andrea", "Female"),
)

DE_LAST_NAMES: tuple[str, ...] = (
    "Müller", "Schmidt", "Schneider", "Fischer", "Weber", "Meyer", "Wagner", "Becker",
    "Schulz", "Hoffmann", "Schäfer", "Koch", "Bauer", "Richter", "Klein", "Wolf", "Schröder",
    "Neumann", "Schwarz", "Zimmermann", "Braun", "Krüger", "Hofmann", "Hartmann", "Lange",
    "Schmitt", "Werner", "Schmitz", "Krause", "Meier",
)

US_COMPANY_WORDS: tuple[str, ...] = (
    "Alpine", "Blue Ridge", "Cascade", "Summit", "Harbor", "Lakeside", "Pioneer", "Redwood",
    "Silverline", "Prairie", "Granite", "Evergreen", "Keystone", "Beacon", "Copper",
    "Riverside", "Sterling", "Frontier", "Maple Leaf", "Oakmont", "Bayview", "Ironwood",
    "Northstar", "Clearwater",
)
US_INDUSTRIES: tuple[str, ...] = (
    "Electronics", "Retail", "Supply", "Logistics", "Hospitality", "Manufacturing", "Audio",
    "Systems", "Outfitters", "Foods", "Engineering", "Medical", "Office Solutions", "Hardware",
    "Media", "Builders",
)
US_SUFFIXES: tuple[str, ...] = ("Inc.", "LLC", "Corp.", "Co.", "Group", "Ltd.")

DE_COMPANY_WORDS: tuple[str, ...] = (
    "Alpen", "Rhein", "Nord", "Süd", "Elb", "Isar", "Main", "Berg", "Hansa", "Donau",
    "Mosel", "Harz", "Spree", "Weser", "Neckar", "Ostsee", "Taunus", "Eifel",
)
DE_INDUSTRIES: tuple[str, ...] = (
    "Elektronik", "Handel", "Logistik", "Technik", "Vertrieb", "Maschinenbau", "Medien",
    "Bürobedarf", "Audio", "Systeme", "Bau", "Medizintechnik",
)
DE_SUFFIXES: tuple[str, ...] = ("GmbH", "AG", "GmbH & Co. KG", "KG", "e.K.")

#: (department, job titles) in English and German
US_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Purchasing", ("Purchasing Manager", "Buyer", "Procurement Specialist")),
    ("Finance", ("Accounts Payable Specialist", "Controller", "CFO")),
    ("Operations", ("Operations Director", "Store Manager", "Warehouse Supervisor")),
    ("IT", ("IT Manager", "Systems Administrator")),
    ("Facilities", ("Facilities Coordinator", "Office Manager")),
    ("Management", ("CEO", "Managing Director")),
)
DE_ROLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Einkauf", ("Einkaufsleiter", "Einkäuferin", "Einkäufer")),
    ("Finanzen", ("Buchhalterin", "Controller", "Leiter Finanzen")),
    ("Betrieb", ("Betriebsleiter", "Filialleiterin", "Lagerleiter")),
    ("IT", ("IT-Leiter", "Systemadministratorin")),
    ("Verwaltung", ("Office Managerin", "Sachbearbeiter")),
    ("Geschäftsführung", ("Geschäftsführer", "Geschäftsführerin")),
)

US_NOTES: tuple[str, ...] = (
    "Prefers delivery before noon.", "Call ahead for loading dock access.",
    "Key account, quarterly business review.", "Invoice by e-mail only.",
    "Seasonal buyer, peaks in Q4.", "Requires certificate of insurance on file.",
)
DE_NOTES: tuple[str, ...] = (
    "Lieferung nur vormittags.", "Bitte vorher anrufen, Rampe 3.",
    "Schlüsselkunde, Quartalsgespräch.", "Rechnung nur per E-Mail.",
    "Saisonkunde, Spitze im 4. Quartal.",
)

#: (category, product nouns, (min price, max price), product type, stocked)
PRODUCT_LINES: tuple[tuple[str, tuple[str, ...], tuple[int, int], str, bool], ...] = (
    ("Speakers", ("Bookshelf Speaker", "Floor Speaker", "Ceiling Speaker", "Outdoor Speaker",
                  "Subwoofer", "Soundbar"), (79, 1499), "Item", True),
    ("Headphones", ("Over-Ear Headphones", "In-Ear Monitors", "Wireless Headset",
                    "Studio Headphones"), (29, 499), "Item", True),
    ("Displays", ("LED Monitor 24in", "LED Monitor 27in", "4K Television 55in",
                  "4K Television 65in", "Digital Signage Display"), (149, 2999), "Item", True),
    ("Projectors", ("Home Cinema Projector", "Short-Throw Projector", "Conference Projector"),
     (399, 3499), "Item", True),
    ("Cables", ("HDMI Cable 2m", "HDMI Cable 5m", "Speaker Wire 30m", "Optical Audio Cable",
                "USB-C Cable"), (5, 79), "Item", True),
    ("Mounts", ("Wall Mount", "Ceiling Mount", "Speaker Stand", "Projector Bracket"),
     (19, 249), "Item", True),
    ("Microphones", ("Condenser Microphone", "Dynamic Microphone", "Wireless Lavalier",
                     "Conference Microphone"), (49, 899), "Item", True),
    ("Amplifiers", ("Stereo Amplifier", "AV Receiver", "Power Amplifier",
                    "Headphone Amplifier"), (149, 2499), "Item", True),
    ("Accessories", ("Gift Card", "Cleaning Kit", "Remote Control"), (9, 99), "Item", False),
    ("Services", ("Installation Service", "Calibration Service", "Extended Warranty",
                  "On-Site Support Visit"), (49, 799), "Service", False),
)
PRODUCT_SERIES: tuple[str, ...] = (
    "Aurora", "Contour", "Vertex", "Nimbus", "Solstice", "Atlas", "Helix", "Quartz", "Zenith",
    "Orion", "Lumen", "Cadence",
)
PRODUCT_MODELS: tuple[str, ...] = ("S1", "S2", "X100", "X200", "Pro", "Mk II", "Lite", "Max")
SERVICE_TIERS: tuple[str, ...] = ("Basic", "Standard", "Premium", "Express", "24/7")
PRODUCT_COLORS: tuple[str, ...] = ("Black", "White", "Silver", "Graphite")

ASSET_TYPES: tuple[tuple[str, int, int], ...] = (
    # (asset type, cost low, cost high)
    ("Forklift", 18_000, 45_000), ("Conveyor Belt", 9_000, 60_000),
    ("Packaging Machine", 25_000, 120_000), ("CNC Mill", 60_000, 250_000),
    ("Air Compressor", 4_000, 22_000), ("HVAC Unit", 8_000, 40_000),
    ("Backup Generator", 12_000, 90_000), ("Pallet Wrapper", 6_000, 28_000),
    ("Delivery Van", 32_000, 58_000), ("Industrial Printer", 3_000, 15_000),
)
ASSET_MAKERS: tuple[str, ...] = (
    "Hydra", "Krontek", "Vulcan", "Meridian", "Tornado", "Baltec", "Nordwerk", "Polaris",
)
WORK_CENTERS: tuple[str, ...] = ("ASSY-01", "PACK-01", "PAINT-01", "MACH-02", "WELD-01",
                                 "SHIP-01")
ASSET_NOTES: tuple[str, ...] = (
    "Annual inspection done, belts replaced.", "Minor oil leak observed, monitor.",
    "Firmware updated by field technician.", "Bearing noise reported by operator.",
    "Calibrated after relocation.", "Filter changed at last visit.",
)

#: (site, warehouse, delivery address name, city index into the company's city list)
USMF_WAREHOUSES: tuple[tuple[str, str, str, int], ...] = (
    ("1", "11", "Main warehouse Redmond", 1), ("1", "12", "Overflow warehouse Redmond", 1),
    ("1", "13", "Returns warehouse Redmond", 1), ("2", "21", "Central warehouse Chicago", 14),
    ("2", "22", "Cross-dock Chicago", 14), ("5", "51", "Southern warehouse Dallas", 9),
)
DEMF_WAREHOUSES: tuple[tuple[str, str, str, int], ...] = (
    ("1", "10", "Hauptlager Frankfurt", 4), ("1", "11", "Außenlager Frankfurt", 4),
    ("2", "20", "Lager Hamburg", 1), ("2", "21", "Umschlaglager Hamburg", 1),
)
